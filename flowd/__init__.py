"""flowd: observe database changes, classify them with rules, act, and record every outcome.

The pipeline, one package or module a stage: `feeds` (change events in) → `rules` (which
flows match) → `act` (their actions, with retries) → `record` (`flow_executions`).
`engine` strings them together for one event, `daemon` drives a feed into it; `commands`
are what `cli`, the command line, runs.
"""

__version__ = "0.1.0"
