"""What a connection knows about the listener that accepted it.

The listener layer creates one ``ListenerContext`` per listener and hands it to every connection it accepts;
connections count themselves in and out (``current_connections``) so that the listener can enforce
``max_connections`` in its protocol factory without any other bookkeeping.
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
    current_connections: int = 0
