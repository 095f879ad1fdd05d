"""``wharf_limit_exceeded_total{limit}``: how often each protocol limit refused or cut something.

The counters are resolved once here; enforcement points call ``exceeded("max_packet_size")`` (a dict lookup
and an add) only when a limit is actually hit, so the normal path costs nothing. Limits that drop messages
are counted in ``wharf_messages_dropped_total{reason}`` instead, listener admission in
``wharf_listener_connections_refused_total{reason}`` and TLS handshakes in
``wharf_tls_handshake_failures_total{reason}``.
"""

from __future__ import annotations

from .metrics import REGISTRY

LIMITS = ("max_packet_size", "max_topic_levels", "max_subscriptions", "max_clientid_len", "idle_timeout",
          "max_awaiting_rel", "max_user_properties", "max_properties_size", "connect_max_packet_size",
          "connect_max_user_properties", "connect_max_properties_size", "retainer.max_retained_messages",
          "retainer.max_retained_bytes", "retainer.max_payload_size", "authentication.password_file.hash_queue_size",
          "max_topic_filters_per_packet", "max_keepalive")

_FAMILY = REGISTRY.counter("wharf_limit_exceeded_total", "Protocol limits hit (packet refused or connection "
                           "closed), by limit", ("limit",))
_CHILDREN = {limit: _FAMILY.labels(limit=limit) for limit in LIMITS}


def exceeded(limit: str) -> None:
    _CHILDREN[limit].value += 1
