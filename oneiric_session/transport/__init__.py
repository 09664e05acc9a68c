"""The MCP client side: reach a Session-Buddy-compatible server over stdio or Streamable HTTP.

Only the delivery agent and `check` import this package (it imports `mcp`).
"""

from oneiric_session.transport.client import SessionBuddyClient

__all__ = ["SessionBuddyClient"]
