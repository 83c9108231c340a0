"""Where events come from: Supabase Realtime, the durable event log, scheduled ticks, files.

A feed implements `base.Feed`, what the daemon drives; every feed checks an event the same
way (`events`) before the engine sees it.
"""
