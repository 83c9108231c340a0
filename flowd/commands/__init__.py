"""What each command does: `run`, `once` (`flowd --once`), `validate`, `migrate`, `demo`.

`flowd.cli` parses the flags and picks one of these; each opens the services it needs
(`flowd.app`) and returns the exit code of what it did.
"""
