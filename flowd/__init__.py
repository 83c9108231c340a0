"""flowd: observe database changes, classify them with rules, act, and record every outcome.

The pipeline, one module a stage: `source` (change events in) → `classify` (which
flows match) → `act` (their actions, with retries) → `record` (`flow_executions`).
`engine` strings them together; `cli` is the command line.
"""

__version__ = "0.1.0"
