"""TLS for the broker's ssl/wss listeners (see ``runtime.py`` for the design).

The listener layer uses ``TlsListenerRuntime`` and ``TlsConfigError``; connections read a client's TLS identity
with ``peer_identity(transport)``.
"""

from .errors import TlsConfigError
from .identity import IDENTITY_MODES, PeerIdentity, peer_identity
from .options import TlsPolicy, validate_options
from .runtime import ReloadResult, TlsListenerRuntime

__all__ = ["IDENTITY_MODES", "PeerIdentity", "ReloadResult", "TlsConfigError", "TlsListenerRuntime", "TlsPolicy",
           "peer_identity", "validate_options"]
