"""The rules behind docs/security.md "Tenancy", unit by unit: filter overlap, which granted filters need a
per-message read check, placeholder values that must never widen an ACL rule or a mountpoint, the read check in
routing (plain, overlapping and shared subscriptions) and the session owner's identity."""

from __future__ import annotations

import pytest
from wharf_broker.authz import Authorizer, ClientFacts, read_guard, filters_overlap
from wharf_broker.config.model import AclFile, Authorization, AuthzCache
from wharf_broker.metrics import Registry
from wharf_broker.router import LocalRouter, Message, Subscription
from wharf_broker.tenancy import fill_mountpoint, session_owner


def authorizer(tmp_path, text: str, no_match: str = "deny", cache: bool = True) -> Authorizer:
    path = tmp_path / "acl.conf"
    path.write_text(text)
    config = Authorization(no_match=no_match, cache=AuthzCache(enable=cache, max_size=8, ttl=60.0),
                           file=AclFile(enable=True, path=str(path), reload_interval=0))
    return Authorizer(config, Registry())


def client(auth, username=None, client_id="c1", cn=None):
    return auth.for_client(ClientFacts.of(username, client_id, cn, ("192.0.2.10", 1234)))


@pytest.mark.parametrize("first, second, overlap", [
    ("secret/#", "+/status", True), ("secret/#", "secret", True), ("a/+", "+/b", True), ("a/b", "a/b", True),
    ("#", "x", True), ("a/#", "b/#", False), ("a/+", "a/b/c", False), ("a/+/c", "a/b/+", True),
    ("a/b", "a/c", False), ("$SYS/#", "#", False), ("$SYS/#", "+/x", False), ("$SYS/+", "$SYS/#", True),
    ("a", "a/+", False), ("a/b/c", "a/#", True), ("+", "a/b", False), ("+/+", "a/b", True),
])
def test_filters_overlap(first, second, overlap):
    assert filters_overlap(first, second) is overlap
    assert filters_overlap(second, first) is overlap


OVERLAP = """
{deny, all, subscribe, ["secret/#", {eq, "admin/#"}, {eq, "root/status"}]}.
{allow, all, subscribe, ["+/status", "public/#", "admin/#", "root/+"]}.
{deny, all, subscribe, ["public/hidden"]}.
"""


@pytest.mark.parametrize("topic_filter, granted, checked", [
    ("+/status", True, True),  # overlaps secret/# (secret/status) and {eq, "root/status"}
    ("public/#", True, False),  # the later deny of public/hidden never decides anything public/# matches
    ("public/news", True, False),
    ("admin/#", False, True),  # {eq, "admin/#"}: that very filter is refused ...
    ("admin/+", True, False),  # ... but it is no topic: nothing delivered through admin/+ is covered by it
    ("root/+", True, True),
    ("secret/x", False, True),
    ("other/x", False, True),  # not granted (no_match = deny): an inherited one would be checked per message
])
def test_which_granted_filters_carry_a_read_check(tmp_path, topic_filter, granted, checked):
    acl = client(authorizer(tmp_path, OVERLAP))
    assert acl.may_subscribe(topic_filter) is granted
    assert acl.needs_read_check(topic_filter) is checked


def test_read_check_is_the_subscribe_rules_asked_about_the_topic(tmp_path):
    auth = authorizer(tmp_path, OVERLAP, cache=False)
    acl = client(auth)
    assert acl.may_read("public/status") and not acl.may_read("secret/status") and not acl.may_read("root/status")
    assert acl.may_read("root/x")
    assert auth.denied["deliver"].value == 2 and auth.denied["subscribe"].value == 0
    mounted = read_guard(acl, "tenants/t1/")
    assert mounted("tenants/t1/public/status")
    assert not mounted("tenants/t1/secret/status")
    assert not mounted("tenants/t2/public/status")  # outside the mountpoint: never readable


def test_no_match_allow_checks_only_filters_overlapping_a_deny(tmp_path):
    acl = client(authorizer(tmp_path, '{deny, all, subscribe, ["secret/#"]}.\n', no_match="allow"))
    assert acl.needs_read_check("#") and acl.needs_read_check("+/x")
    assert not acl.needs_read_check("public/#") and not acl.needs_read_check("$SYS/#")
    assert not acl.may_subscribe("secret/#")


PLACEHOLDERS = """
{deny, all, subscribe, ["users/${username}/private/#"]}.
{deny, all, publish, [{eq, "cmd/${clientid}"}]}.
{allow, all, all, ["users/${username}/#", "devices/${clientid}/#", "certs/${cert_common_name}/#"]}.
{allow, all, all, ["cmd/#"]}.
"""


def test_placeholders_fill_in_safe_values(tmp_path):
    acl = client(authorizer(tmp_path, PLACEHOLDERS), username="alice", client_id="d1", cn="sensor-7")
    assert acl.may_subscribe("users/alice/inbox") and not acl.may_subscribe("users/alice/private/x")
    assert acl.may_publish("devices/d1/up") and acl.may_publish("certs/sensor-7/up")
    assert not acl.may_publish("cmd/d1") and acl.may_publish("cmd/d2")
    assert not acl.may_subscribe("users/bob/inbox") and not acl.may_publish("certs/other/up")


@pytest.mark.parametrize("username, client_id, cn", [
    ("+", "+", "+"), ("#", "#", "#"), ("a/b", "x/y", "c/d"), ("", "", ""), (None, "n\x00ul", None),
])
def test_unsafe_placeholder_values_never_widen_a_rule(tmp_path, username, client_id, cn):
    acl = client(authorizer(tmp_path, PLACEHOLDERS), username=username, client_id=client_id, cn=cn)
    # Allow rules with the unsafe value do not apply at all: nobody's users/devices/certs topics.
    for topic in ("users/alice/inbox", "users/+/inbox", "devices/d1/up", "certs/sensor-7/up"):
        assert not acl.may_publish(topic), topic
    assert not acl.may_subscribe("users/#") and not acl.may_subscribe("devices/+/up")
    # Deny rules apply from the unsafe level on to everything: stricter, never looser.
    if username is not None:
        assert acl.needs_read_check("users/#")
    assert not acl.may_publish("cmd/anything")  # {eq, "cmd/${clientid}"} became cmd/#


@pytest.mark.parametrize("mountpoint, client_id, username, expected", [
    ("tenants/${clientid}/", "c1", None, ("tenants/c1/", None)),
    ("tenants/${username}/", "c1", "alice", ("tenants/alice/", None)),
    ("t/${username}/${clientid}/", "c1", "alice", ("t/alice/c1/", None)),
    ("tenants/${clientid}/", "+", None, ("", "clientid")),
    ("tenants/${clientid}/", "a/b", None, ("", "clientid")),
    ("tenants/${clientid}/", "x#", None, ("", "clientid")),
    ("tenants/${username}/", "c1", None, ("", "username")),
    ("tenants/${username}/", "c1", "", ("", "username")),
    ("tenants/${username}/", "c1", "+", ("", "username")),
    ("fixed/", "+", "+", ("fixed/", None)),  # no placeholder: the values do not matter
])
def test_mountpoint_placeholders(mountpoint, client_id, username, expected):
    assert fill_mountpoint(mountpoint, client_id, username) == expected


class FakeSession:
    def __init__(self, client_id: str, connected: bool = True) -> None:
        self.client_id = client_id
        self.channel = object() if connected else None
        self.got: list[str] = []

    def deliver(self, message, qos, retain, sub_ids) -> None:
        self.got.append(message.topic)


def test_routing_skips_subscriptions_whose_read_check_refuses(tmp_path):
    acl = client(authorizer(tmp_path, OVERLAP))
    router = LocalRouter()
    checked, free, overlapping = FakeSession("a"), FakeSession("b"), FakeSession("c")
    sub = Subscription("+/status", 1)
    sub.guard = read_guard(acl)
    router.subscribe(checked, sub)
    router.subscribe(free, Subscription("+/status", 1))
    # A session with a checked filter and an unchecked one matching the same message gets it once.
    both = Subscription("+/status", 1)
    both.guard = read_guard(acl)
    router.subscribe(overlapping, both)
    router.subscribe(overlapping, Subscription("secret/status", 1))
    for topic in ("secret/status", "public/status"):
        router.publish(Message(topic, b"x", 1))
    assert checked.got == ["public/status"]
    assert free.got == ["secret/status", "public/status"]
    assert overlapping.got == ["secret/status", "public/status"]


def test_shared_group_passes_over_members_that_may_not_read(tmp_path):
    acl = client(authorizer(tmp_path, OVERLAP))
    router = LocalRouter()
    guarded, open_member, offline = FakeSession("g"), FakeSession("o"), FakeSession("off", connected=False)
    sub = Subscription("+/status", 1, share_group="g")
    sub.guard = read_guard(acl)
    router.subscribe(guarded, sub)
    router.subscribe(open_member, Subscription("+/status", 1, share_group="g"))
    for _ in range(4):
        router.publish(Message("secret/status", b"x", 1))
        router.publish(Message("public/status", b"x", 1))
    # Round-robin goes on past the member that may not read a message: each secret one goes to the other.
    assert guarded.got == ["public/status"] * 4
    assert open_member.got == ["secret/status"] * 4
    # Only members that may not read it: the message goes to nobody in the group.
    lone = LocalRouter()
    only = Subscription("+/status", 1, share_group="h")
    only.guard = read_guard(acl)
    lone.subscribe(offline, only)
    assert lone.publish(Message("secret/status", b"x", 1)) == 0 and offline.got == []
    assert lone.publish(Message("public/status", b"x", 1)) == 1 and offline.got == ["public/status"]


class Identity:
    def __init__(self, der: bytes | None, dn: str | None) -> None:
        self.der = der
        self.dn = dn


def test_session_owner_identity():
    assert session_owner("alice", True, None, None, "") == ("user", "alice", "")
    # A claimed (anonymous) username is never the same identity as the authenticated one.
    assert session_owner("alice", False, None, None, "") == ("anonymous", "alice", "")
    assert session_owner(None, False, None, None, "") == ("anonymous", "", "")
    assert session_owner(None, False, Identity(b"der", "CN=sensor-7,O=Acme"), None, "") == \
        ("cert", "CN=sensor-7,O=Acme", "")
    assert session_owner(None, False, None, "sensor-7", "") == ("cert", "CN=sensor-7", "")
    # The same user under another mountpoint is another tenant's identity.
    assert session_owner("alice", True, None, None, "t1/") != session_owner("alice", True, None, None, "t2/")


def test_read_check_decisions_follow_an_acl_reload(tmp_path):
    auth = authorizer(tmp_path, OVERLAP)
    check = read_guard(client(auth))
    assert check("public/status") and check("public/status")  # the second from the read check's own cache
    (tmp_path / "acl.conf").write_text('{deny, all, subscribe, ["public/#"]}.\n{allow, all}.\n')
    assert auth.reload()
    assert not check("public/status") and check("secret/status")


def test_placeholder_values_are_not_filled_in_again(tmp_path):
    assert fill_mountpoint("t/${clientid}/${username}/", "${username}", "bob") == ("t/${username}/bob/", None)
    acl = client(authorizer(tmp_path, '{allow, all, all, ["u/${username}/${clientid}/#"]}.\n'),
                 username="${clientid}", client_id="c1")
    assert acl.may_publish("u/${clientid}/c1/x") and not acl.may_publish("u/c1/c1/x")
