"""`python -m flowd` is the `flowd` command."""

from flowd.cli import main

main()
