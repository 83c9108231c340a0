"""Where events come from: Supabase Realtime, the durable event log, scheduled ticks, files.

Every feed checks an event the same way (`events`) before the engine sees it.
"""
