"""The ACL file format and its decisions: rules, placeholders, address ranges, certificate CN, first match,
``no_match``, the per-client cache and its invalidation on reload."""

from __future__ import annotations

import pytest
from wharf_broker.authz import Authorizer, ClientFacts, filter_covers
from wharf_broker.authz.acl_file import AclSyntaxError, parse_acl
from wharf_broker.config.model import AclFile, Authorization, AuthzCache
from wharf_broker.metrics import Registry

ACL = """
% EMQX-style rules
{allow, {username, "dashboard"}, subscribe, ["$SYS/#"]}.
{allow, {ipaddr, "127.0.0.1"}, all, ["$SYS/#", "#"]}.
{deny, all, subscribe, ["$SYS/#", {eq, "#"}]}.
{allow, {cert_common_name, "sensor-7"}, publish, ["sensors/7/+"]}.
{allow, {'and', [{clientid, {re, "^dev-[0-9]+$"}}, {ipaddrs, ["10.1.0.0/16", "2001:db8::/32"]}]}, publish, ["devices/${clientid}/#"]}.
{allow, all, all, ["users/${username}/#"]}.
{deny, {user, "mallory"}}.
{allow, all, subscribe, ["public/+"]}.
"""


def authorizer(tmp_path, text=ACL, no_match="deny", cache=True) -> Authorizer:
    path = tmp_path / "acl.conf"
    path.write_text(text)
    config = Authorization(no_match=no_match, cache=AuthzCache(enable=cache, max_size=4, ttl=60.0),
                           file=AclFile(enable=True, path=str(path), reload_interval=0))
    return Authorizer(config, Registry())


def client(auth, username=None, client_id="c1", cn=None, ip="192.0.2.10"):
    return auth.for_client(ClientFacts.of(username, client_id, cn, (ip, 1234)))


@pytest.mark.parametrize("rule, requested, covered", [
    ("#", "a/b", True), ("#", "$SYS/x", False), ("a/#", "a", True), ("a/#", "a/+/c", True),
    ("a/+", "a/b", True), ("a/+", "a/+", True), ("a/+", "a/#", False), ("a/+", "a/b/c", False),
    ("a/b", "a/+", False), ("+/b", "x/b", True), ("a/b", "a/b", True), ("a/b", "a/c", False),
])
def test_filter_covers(rule, requested, covered):
    assert filter_covers(rule, requested) is covered


def test_first_match_wins_and_no_match(tmp_path):
    auth = authorizer(tmp_path)
    local = client(auth, ip="127.0.0.1")
    assert local.may_subscribe("#")  # the loopback rule comes before the deny of '#'
    assert local.may_publish("anything/at/all")
    remote = client(auth)
    assert not remote.may_subscribe("#")  # {eq, "#"}
    assert not remote.may_subscribe("$SYS/brokers")
    assert remote.may_subscribe("public/news")
    assert not remote.may_publish("public/news")  # subscribe-only rule; no_match = deny
    assert not remote.may_subscribe("public/news/deeper")
    dashboard = client(auth, username="dashboard")
    assert dashboard.may_subscribe("$SYS/brokers/x")


def test_placeholders(tmp_path):
    auth = authorizer(tmp_path)
    alice = client(auth, username="alice", client_id="alice-phone")
    assert alice.may_publish("users/alice/inbox")
    assert alice.may_subscribe("users/alice/#")
    assert not alice.may_publish("users/bob/inbox")
    assert not alice.may_subscribe("users/+/inbox")  # would reach other users' topics
    anonymous = client(auth, username=None)
    assert not anonymous.may_publish("users//inbox")  # no username: the rule does not apply
    # A username holding wildcards or '/' must not widen the rule to other users' topics.
    for name in ("+", "#", "a/b"):
        sneaky = client(auth, username=name)
        assert not sneaky.may_subscribe("users/bob/#")
        assert not sneaky.may_subscribe("users/+/#")
        assert not sneaky.may_publish("users/a/b/x")


def test_regex_and_address_ranges(tmp_path):
    auth = authorizer(tmp_path)
    assert client(auth, client_id="dev-42", ip="10.1.2.3").may_publish("devices/dev-42/temp")
    assert client(auth, client_id="dev-42", ip="2001:db8::9").may_publish("devices/dev-42/temp")
    assert client(auth, client_id="dev-42", ip="::ffff:10.1.2.3").may_publish("devices/dev-42/temp")
    assert not client(auth, client_id="dev-42", ip="10.2.0.1").may_publish("devices/dev-42/temp")
    assert not client(auth, client_id="dev-42x", ip="10.1.2.3").may_publish("devices/dev-42x/temp")
    assert not client(auth, client_id="dev-42", ip="10.1.2.3").may_publish("devices/dev-43/temp")


def test_certificate_common_name(tmp_path):
    auth = authorizer(tmp_path)
    assert client(auth, cn="sensor-7").may_publish("sensors/7/temp")
    assert not client(auth, cn="sensor-8").may_publish("sensors/7/temp")
    assert not client(auth, cn=None).may_publish("sensors/7/temp")


def test_two_element_rule_covers_everything(tmp_path):
    auth = authorizer(tmp_path, no_match="allow")
    mallory = client(auth, username="mallory")
    assert not mallory.may_publish("x/y")
    assert not mallory.may_subscribe("x/#")
    assert mallory.may_publish("users/mallory/x")  # an earlier rule matched first
    assert client(auth, username="eve").may_publish("x/y")  # no_match = allow


def test_denials_counted_and_cached(tmp_path):
    auth = authorizer(tmp_path)
    acl = client(auth)
    for _ in range(3):
        assert not acl.may_publish("secret")
    assert auth.denied["publish"].value == 3  # every refusal counts, cached or not
    assert ("publish", "secret") in acl.cache
    for index in range(10):
        acl.may_publish(f"t/{index}")
    assert len(acl.cache) <= 4  # bounded


def test_reload_invalidates_cached_decisions(tmp_path):
    auth = authorizer(tmp_path)
    acl = client(auth, username="alice")
    assert acl.may_publish("users/alice/x")
    (tmp_path / "acl.conf").write_text('{deny, all}.\n')
    assert acl.may_publish("users/alice/x")  # not reloaded yet: the cached decision
    assert auth.reload()
    assert not acl.may_publish("users/alice/x")
    assert not auth.reload()  # same content: nothing to do


def test_bad_reload_keeps_old_rules(tmp_path):
    auth = authorizer(tmp_path)
    generation = auth.generation
    (tmp_path / "acl.conf").write_text('{allow, all, publish, ["a"]}\n')  # no final dot
    assert not auth.reload()
    assert auth.generation == generation and len(auth.rules) == 8


@pytest.mark.parametrize("text, message", [
    ('{allow, all, publish, ["a"]}', "end with"),
    ('{permit, all}.', "permission"),
    ('{allow, {group, "x"}, all, ["a"]}.', "unknown client spec"),
    ('{allow, all, write, ["a"]}.', "action"),
    ('{allow, all, publish, []}.', "non-empty"),
    ('{allow, {ipaddr, "10.0.0.300"}, all, ["a"]}.', "bad IP"),
    ('{allow, {username, {re, "("}}, all, ["a"]}.', "regular expression"),
    ('{allow, all, publish, ["a"]}. $', "unexpected"),
])
def test_syntax_errors_name_the_line(text, message):
    with pytest.raises(AclSyntaxError, match=message):
        parse_acl("\n" + text, "acl.conf")
    with pytest.raises(AclSyntaxError, match="acl.conf:2"):
        parse_acl("\n" + text, "acl.conf")
