"""What a connection knows about the listener that accepted it.

The listener layer creates one ``ListenerContext`` per listener and hands it to every connection it accepts.
``current_connections`` counts the connection slots in use: reserved when a connection is accepted (before any
PROXY header or TLS handshake) and released when it ends, however it ends (``listener_slots.py``), so that
``max_connections`` is exact.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False)
class ListenerContext:
    id: str  # "type:name", e.g. "ssl:default"
    type: str  # tcp | ssl | ws | wss
    mountpoint: str = ""
    # Effective X.509 identity mapping for this listener (listener override, else the global mqtt setting).
    peer_cert_as_username: str = "disabled"
    peer_cert_as_clientid: str = "disabled"
    # Send server-to-client topic aliases to 5.0 clients that allow them (``topic_alias_out = on``).
    topic_alias_out: bool = False
    current_connections: int = 0

    def reserve(self, limit: int | None) -> bool:
        """Take a slot unless ``limit`` (None: no limit) slots are in use already."""
        if limit is not None and self.current_connections >= limit:
            return False
        self.current_connections += 1
        return True

    def release(self) -> None:
        self.current_connections -= 1
