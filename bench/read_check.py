"""What the per-message read check costs in routing (docs/security.md, "Tenancy").

In-process, one core, no sockets: ``LocalRouter.publish`` of one message to ``--subscribers`` sessions subscribed to
``+/status`` (a no-op ``deliver``), under a real ACL file, in four set-ups:

- ``none``: the filter overlaps no deny rule: ``guard`` is None (what every such subscription pays);
- ``checked-allowed``: ``{deny, all, subscribe, ["secret/#"]}`` before the allow: every subscription carries a read
  check, and the message (``public/status``) passes it (decision cache on, the default);
- ``checked-denied``: the same, with the message on ``secret/status`` (refused to every subscriber);
- ``checked-nocache``: ``checked-allowed`` with ``authorization.cache.enable = false``.

``--base DIR`` also times the router of another checkout's ``broker/`` (e.g. the code before the read check) in
the ``none`` set-up. Prints ns per delivery (median of ``--repeats``)::

    PYTHONPATH=.pyshim python3 bench/read_check.py [--subscribers 100] [--messages 20000] [--base /tmp/old]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

from wharf_broker.authz import Authorizer, ClientFacts, read_guard
from wharf_broker.config.model import AclFile, Authorization, AuthzCache
from wharf_broker.metrics import Registry
from wharf_broker.router import LocalRouter, Message, Subscription

ACL_PLAIN = '{allow, all, subscribe, ["+/status"]}.\n'
ACL_DENY = '{deny, all, subscribe, ["secret/#"]}.\n{allow, all, subscribe, ["+/status"]}.\n'


class Sink:
    __slots__ = ("client_id", "channel", "count")

    def __init__(self, index: int) -> None:
        self.client_id = f"c{index}"
        self.channel = self
        self.count = 0

    def deliver(self, message, qos, retain, sub_ids) -> None:
        self.count += 1


def acl_for(text: str, cache: bool, index: int):
    path = Path(tempfile.mkdtemp()) / "acl.conf"
    path.write_text(text)
    config = Authorization(no_match="deny", cache=AuthzCache(enable=cache),
                           file=AclFile(enable=True, path=str(path), reload_interval=0))
    return Authorizer(config, Registry()).for_client(ClientFacts.of(None, f"c{index}", None, None))


def build(router_cls, subscription_cls, subscribers: int, acl_text: str | None, cache: bool = True):
    router = router_cls()
    for index in range(subscribers):
        subscription = subscription_cls("+/status", 1)
        if acl_text is not None:
            acl = acl_for(acl_text, cache, index)
            subscription.guard = read_guard(acl) if acl.needs_read_check("+/status") else None
        router.subscribe(Sink(index), subscription)
    return router


def time_publish(router, message_cls, topic: str, messages: int, subscribers: int) -> float:
    message = message_cls(topic, b"x" * 64, 1)
    router.publish(message)  # warm the topic cache and the ACL decision caches
    start = time.perf_counter()
    for _ in range(messages):
        router.publish(message)
    return (time.perf_counter() - start) / (messages * subscribers) * 1e9


def load_base(path: str):
    """``router`` of another checkout's broker package (its ``mqtt`` and ``trie`` modules come along)."""
    package = Path(path).resolve()
    spec = importlib.util.spec_from_file_location("wharf_base", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["wharf_base"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("wharf_base.router")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--base", help="another checkout's broker/ directory, timed in the 'none' set-up")
    args = parser.parse_args()
    n, m = args.subscribers, args.messages
    setups = {
        "none": lambda: (build(LocalRouter, Subscription, n, ACL_PLAIN), Message, "public/status"),
        "checked-allowed": lambda: (build(LocalRouter, Subscription, n, ACL_DENY), Message, "public/status"),
        "checked-denied": lambda: (build(LocalRouter, Subscription, n, ACL_DENY), Message, "secret/status"),
        "checked-nocache": lambda: (build(LocalRouter, Subscription, n, ACL_DENY, cache=False), Message,
                                    "public/status"),
    }
    if args.base:
        base = load_base(args.base)
        setups["base (before)"] = lambda: (build(base.LocalRouter, base.Subscription, n, None), base.Message,
                                           "public/status")
    results = {name: [] for name in setups}
    for _ in range(args.repeats):
        for name, make in setups.items():  # interleaved, so that drift in the machine's load spreads evenly
            router, message_cls, topic = make()
            results[name].append(time_publish(router, message_cls, topic, m, n))
    print(f"{n} subscribers on +/status, {m} messages, median of {args.repeats}: ns per delivery")
    for name, values in results.items():
        print(f"  {name:16s} {statistics.median(values):8.1f}   (min {min(values):.1f}, max {max(values):.1f})")


if __name__ == "__main__":
    main()
