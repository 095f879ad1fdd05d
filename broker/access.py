"""Access control assembled from the config: the authenticators, the authorizer and flapping detection.

The broker holds one ``AccessControl`` (``broker.access``); the application starts its file watchers, stops
them, and on SIGHUP calls ``reload()``. The channel asks it three things: is this client id banned, count this
authentication result, and give me this client's ACL view (None when authorization cannot refuse anything, so
the PUBLISH path pays nothing).
"""

from __future__ import annotations

import logging

from .authn import build_authenticators
from .authn.throttle import LoginThrottler
from .authz import Authorizer, ClientAcl, ClientFacts
from .config.model import BrokerConfig
from .flapping import FlappingDetector
from .metrics import REGISTRY, Registry

log = logging.getLogger("wharf_broker.access")

AUTHN_RESULTS = ("allow", "deny", "anonymous", "error", "banned")


class AccessControl:
    def __init__(self, config: BrokerConfig, registry: Registry = REGISTRY) -> None:
        self.authenticators = build_authenticators(config.authentication)
        self.login_throttle = LoginThrottler(config.authentication.login_throttle, registry)
        self.authorizer = Authorizer(config.authorization, registry)
        self.flapping = FlappingDetector(config.flapping_detect, registry)
        family = registry.counter("wharf_authn_total",
                                  "CONNECT authentication outcomes (anonymous: allowed without credentials "
                                  "checked by any authenticator)", ("result",))
        self.authn = {result: family.labels(result=result) for result in AUTHN_RESULTS}

    def start(self) -> None:
        for part in (*self.authenticators, self.authorizer):
            part.start()

    async def stop(self) -> None:
        for part in (*self.authenticators, self.authorizer):
            await part.stop()

    def reload(self) -> dict[str, bool]:
        """Re-read the password and ACL files now (each keeps its old content if the new one is bad)."""
        changed = {getattr(hook, "name", type(hook).__name__): hook.reload() for hook in self.authenticators}
        changed["acl"] = self.authorizer.reload()
        return changed

    def client_acl(self, username: str | None, client_id: str, cert_common_name: str | None,
                   peer) -> ClientAcl | None:
        if not self.authorizer.needed:
            return None
        return self.authorizer.for_client(ClientFacts.of(username, client_id, cert_common_name, peer))
