"""The shell's process: what a session is, which tracker records it, and where it goes.

Standard library only, like `shell/`. By job: `tracker` (the protocol every provider
implements), `registry` (the Oneiric-style resolver of the `session_tracker` category),
`providers/` (`session-buddy`, `noop`, `memory`), `events` (the wire contract's start and end
events, sanitized), `limits` (their caps), `procinfo` (who a pid is), `destination` (where
events go and how hard to try), `oneiric_plugin` (the entry point Oneiric's resolver loads).
The agent reads `events`, `procinfo` and `destination` too: they describe what is spooled.
"""
