"""Users and ACLs through the MQTTBroker: the defaults the operator renders (anonymous off, no_match deny),
whole-volume mounts for the password Secret and the ACL ConfigMap/Secret, and a real broker started from the
rendered config that picks up a kubelet-style volume update (the ``..data`` symlink swap) without a restart."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from wharf_operator import layout, render, resources
from wharf_operator.crd import defaulted_spec, spec_schema

ACCESS_SPEC = {
    "listeners": [{"name": "mqtt", "type": "tcp", "port": 1883}],
    "authentication": {"passwordFile": {"secretRef": {"name": "mqtt-users"}, "reloadInterval": "200ms"},
                       "http": {"url": "http://auth.example:8080/mqtt", "requestTimeout": "2s"}},
    "authorization": {"aclRef": {"name": "mqtt-acl", "reloadInterval": "200ms"}},
}


def test_operator_defaults_refuse_anonymous_and_unmatched():
    tree = render.config_tree(defaulted_spec({}))
    assert tree["authentication"] == {"allow_anonymous": False}
    assert tree["authorization"] == {"no_match": "deny", "deny_action": "ignore"}
    opened = render.config_tree(defaulted_spec({"authentication": {"allowAnonymous": True},
                                                "authorization": {"noMatch": "allow"}}))
    assert opened["authentication"]["allow_anonymous"] is True
    assert opened["authorization"]["no_match"] == "allow"


def test_schema_describes_and_constrains_the_fields():
    properties = spec_schema()["properties"]
    authn, authz = properties["authentication"], properties["authorization"]
    assert authn["properties"]["allowAnonymous"]["default"] is False
    assert authn["properties"]["passwordFile"]["required"] == ["secretRef"]
    assert authn["properties"]["http"]["properties"]["url"]["pattern"] == "^https?://"
    assert authz["properties"]["noMatch"]["enum"] == ["allow", "deny"]
    assert authz["properties"]["aclRef"]["properties"]["kind"]["enum"] == ["ConfigMap", "Secret"]
    for schema in (authn, authz, *authn["properties"].values(), *authz["properties"].values()):
        assert schema.get("description"), schema


def test_spec_config_cannot_take_over_access_control():
    for root in ("authentication", "authorization"):
        with pytest.raises(render.RenderError, match=f"spec.config.{root} is managed"):
            render.config_tree(defaulted_spec({"config": {root: {"allow_anonymous": True}}}))


@pytest.mark.parametrize("kind, volume_key", [("ConfigMap", "configMap"), ("Secret", "secret")])
def test_users_and_acl_are_whole_volume_mounts(kind, volume_key):
    spec = defaulted_spec({**ACCESS_SPEC, "authorization": {"aclRef": {"name": "mqtt-acl", "kind": kind}}})
    tree = render.config_tree(spec)
    sts = resources.stateful_set("b", "ns", spec, render.restart_hash(tree))
    pod = sts["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert all("subPath" not in m for m in mounts.values())
    for path in (tree["authentication"]["password_file"]["path"], tree["authorization"]["file"]["path"]):
        assert mounts[path.rsplit("/", 1)[0]]["readOnly"] is True
    assert tree["authentication"]["password_file"]["path"] == f"{layout.users_dir()}/passwd"
    assert tree["authorization"]["file"]["path"] == f"{layout.acl_dir()}/acl.conf"
    assert volumes["users"]["secret"]["secretName"] == "mqtt-users"
    acl_volume = volumes["acl"][volume_key]
    assert acl_volume.get("name", acl_volume.get("secretName")) == "mqtt-acl"


def _kubelet_write(directory: Path, files: dict[str, str], generation: int) -> None:
    """Write a volume the way the kubelet does: a new timestamped directory, then ``..data`` swapped to it."""
    data = directory / f"..{generation}"
    data.mkdir(parents=True)
    for name, text in files.items():
        (data / name).write_text(text)
    link = directory / "..data_tmp"
    link.symlink_to(data.name)
    os.replace(link, directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


def _hash_line(username: str, password: str) -> str:
    out = subprocess.run([sys.executable, "-m", "wharf_broker.authn.passwd", "--stdin", "--iterations", "1000",
                          username], input=password.encode() + b"\n", capture_output=True, check=True, timeout=60)
    return out.stdout.decode()


async def _connack(port: int, username: str | None, password: str | None) -> int:
    from wharf_broker.mqtt.frame import Parser, encode
    from wharf_broker.mqtt.packets import Connect
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode(Connect(version=5, client_id="c", username=username,
                                password=password.encode() if password else None), 5))
    parser = Parser(version=5)
    packets: list = []
    while not packets:
        packets = parser.feed(await asyncio.wait_for(reader.read(1024), 10))
    writer.close()
    return packets[0].reason_code


async def test_rendered_broker_reloads_users_and_acl_from_updated_volumes(tmp_path, broker_process):
    root = tmp_path / "wharf"
    (root / "admin").mkdir(parents=True)
    (root / "admin" / "token").write_text("t0ken")
    _kubelet_write(root / "users", {"passwd": _hash_line("alice", "one")}, 1)
    _kubelet_write(root / "acl", {"acl.conf": '{allow, all, all, ["users/${username}/#"]}.\n'}, 1)
    spec = defaulted_spec({**ACCESS_SPEC, "authentication": {
        "passwordFile": ACCESS_SPEC["authentication"]["passwordFile"]}})
    tree = render.config_tree(spec, root=str(root))
    tree["listeners"]["tcp"]["mqtt"]["bind"] = "127.0.0.1:0"
    tree["dashboard"]["listeners"]["http"]["bind"] = "127.0.0.1:0"
    tree["prometheus"]["bind"] = "127.0.0.1:0"
    broker = broker_process(render.to_hocon(tree), token="t0ken")
    port = broker.port("tcp:mqtt")
    assert await _connack(port, None, None) == 0x87  # anonymous is off
    assert await _connack(port, "alice", "one") == 0
    assert await _connack(port, "bob", "two") == 0x86

    _kubelet_write(root / "users", {"passwd": _hash_line("alice", "one") + _hash_line("bob", "two")}, 2)
    deadline = asyncio.get_running_loop().time() + 15
    while await _connack(port, "bob", "two") != 0:
        assert asyncio.get_running_loop().time() < deadline, "the new user never got in"
        await asyncio.sleep(0.2)
    _kubelet_write(root / "acl", {"acl.conf": "{deny, all}.\n"}, 2)
    broker.wait_for_log("acl.conf: 1 rules", timeout=15)


def test_example_acl_parses_and_renders():
    import yaml
    from wharf_broker.authz.acl_file import parse_acl

    path = Path(__file__).resolve().parents[2] / "manifests" / "examples" / "users-and-acl.yaml"
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    (acl,) = [doc for doc in docs if doc["kind"] == "ConfigMap"]
    assert len(parse_acl(acl["data"]["acl.conf"], path.name)) == 4
    (broker,) = [doc for doc in docs if doc["kind"] == "MQTTBroker"]
    tree = render.config_tree(defaulted_spec(broker["spec"]))
    assert tree["authorization"]["file"]["path"].endswith("/acl/acl.conf")
    assert tree["authentication"]["password_file"]["path"].endswith("/users/passwd")
