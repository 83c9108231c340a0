"""Rules: which flows a change matches. Pure — no I/O, no clock but the one passed in.

`classify` compiles a flow's rules and indexes flows by (schema, table, type); `index`
generates one matching function per (table, type); `pattern` is MATCHES on RE2; `limits`
the bounds on rule values; `reltime` `now`/`now-7d` in rules; `cron` schedule expressions.
"""
