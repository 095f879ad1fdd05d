"""Password hashes, the password file and its tool, the HTTP authenticator's cache, flapping bookkeeping."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from wharf_broker.auth import ConnectInfo
from wharf_broker.authn import hashing
from wharf_broker.authn.http import TtlCache
from wharf_broker.authn.password_file import (
    PasswordFileAuthenticator,
    PasswordFileError,
    parse_password_file,
)
from wharf_broker.authz import Authorizer
from wharf_broker.config.model import AclFile, Authorization, FlappingDetect, PasswordFileAuthn
from wharf_broker.flapping import FlappingDetector
from wharf_broker.metrics import Registry

from tests.support import eventually


def passwd(*args, password: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wharf_broker.authn.passwd", *args],
                          input=(password + "\n").encode() if password is not None else None,
                          capture_output=True, check=check, timeout=60)


@pytest.mark.parametrize("algorithm", ["pbkdf2_sha256", "pbkdf2_sha512"])
def test_hashes_are_salted_and_verify(algorithm):
    first = hashing.hash_password(b"secret", algorithm, 1000)
    second = hashing.hash_password(b"secret", algorithm, 1000)
    assert first != second  # salted
    assert b"secret" not in first.encode()
    hashing.check_format(first)
    assert hashing.verify_password(b"secret", first)
    assert not hashing.verify_password(b"Secret", first)


@pytest.mark.parametrize("line, message", [
    ("alice:secret", "must look like"),
    ("alice", "expected <username>:<hash>"),
    (":pbkdf2_sha256$1$AAAA$AAAA", "expected <username>:<hash>"),
    ("alice:pbkdf2_sha256$x$AAAA$AAAA", "iteration count"),
    ("alice:pbkdf2_sha256$10$***$AAAA", "base64"),
])
def test_bad_lines_are_refused_with_their_line_number(line, message):
    with pytest.raises(PasswordFileError, match=message) as caught:
        parse_password_file("# users\n" + line + "\n", "users.txt")
    assert "users.txt:2" in str(caught.value)


def test_duplicate_users_are_refused():
    line = "alice:" + hashing.hash_password(b"x", iterations=1)
    with pytest.raises(PasswordFileError, match="twice"):
        parse_password_file(f"{line}\n{line}\n")


def test_tool_adds_replaces_and_deletes(tmp_path):
    users = tmp_path / "users.txt"
    passwd("-f", str(users), "--stdin", "--iterations", "1000", "alice", password="one")
    passwd("-f", str(users), "--stdin", "--iterations", "1000", "bob", password="two")
    passwd("-f", str(users), "--stdin", "--iterations", "1000", "alice", password="three")
    parsed = parse_password_file(users.read_text())
    assert list(parsed) == ["alice", "bob"]
    assert hashing.verify_password(b"three", parsed["alice"])
    assert "three" not in users.read_text()
    assert oct(users.stat().st_mode & 0o777) == "0o600"
    passwd("-f", str(users), "-D", "bob")
    assert list(parse_password_file(users.read_text())) == ["alice"]
    assert passwd("-f", str(users), "-D", "bob", check=False).returncode == 1
    users.write_text("broken line\n")
    result = passwd("-f", str(users), "--stdin", "carol", password="x", check=False)
    assert result.returncode == 2 and b"broken" in result.stderr
    assert users.read_text() == "broken line\n"  # never rewritten
    assert passwd("bad:name", "--stdin", password="x", check=False).returncode == 2


async def test_authenticator_decisions_and_reload(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("alice:" + hashing.hash_password(b"pw", iterations=1000) + "\n")
    authn = PasswordFileAuthenticator(PasswordFileAuthn(enable=True, path=str(users), reload_interval=0))

    def info(username, password):
        return ConnectInfo("c", username, password, "tcp:default", ("127.0.0.1", 1), 5)
    assert (await authn.authenticate(info("alice", b"pw"))).decision == "allow"
    assert (await authn.authenticate(info("alice", b"nope"))).decision == "deny"
    assert (await authn.authenticate(info("mallory", b"pw"))).decision == "ignore"
    assert (await authn.authenticate(info(None, None))).decision == "ignore"
    assert len(authn._verified) == 1  # the success is remembered, by digest
    users.write_text("alice:" + hashing.hash_password(b"new", iterations=1000) + "\n")
    assert authn.reload()
    assert not authn._verified  # a changed file forgets every remembered check
    assert (await authn.authenticate(info("alice", b"pw"))).decision == "deny"
    assert (await authn.authenticate(info("alice", b"new"))).decision == "allow"
    users.write_text("alice:plain\n")
    assert not authn.reload()  # refused whole; the old users stay
    assert (await authn.authenticate(info("alice", b"new"))).decision == "allow"


async def test_password_and_acl_files_are_rechecked_every_reload_interval(tmp_path, caplog):
    """The periodic re-check (``watched_file.WatchedFile``) both files share: a changed file comes into force by
    itself, a broken one is logged and the old content stays."""
    users = tmp_path / "users.txt"
    users.write_text("alice:" + hashing.hash_password(b"pw", iterations=1000) + "\n")
    acl = tmp_path / "acl.conf"
    acl.write_text('{allow, all, publish, ["a/#"]}.\n')
    authn = PasswordFileAuthenticator(PasswordFileAuthn(enable=True, path=str(users), reload_interval=0.05))
    authz = Authorizer(Authorization(no_match="deny", file=AclFile(enable=True, path=str(acl), reload_interval=0.05)),
                       Registry())
    authn.start()
    authz.start()
    try:
        users.write_text("bob:" + hashing.hash_password(b"pw", iterations=1000) + "\n")
        acl.write_text('{allow, all, publish, ["a/#"]}.\n{allow, all, subscribe, ["b/#"]}.\n')
        await eventually(lambda: "bob" in authn.users and len(authz.rules) == 2, "both files re-read")
        users.write_text("bob:plain\n")
        acl.write_text("not an ACL\n")
        await eventually(lambda: "password file" in caplog.text and "ACL file" in caplog.text
                         and "not reloaded" in caplog.text, "both failures logged")
        assert set(authn.users) == {"bob"} and len(authz.rules) == 2
    finally:
        await authn.stop()
        await authz.stop()


def test_first_load_of_a_bad_file_fails_loudly(tmp_path):
    users = tmp_path / "users.txt"
    users.write_text("alice:plain\n")
    with pytest.raises(PasswordFileError, match="users.txt"):
        PasswordFileAuthenticator(PasswordFileAuthn(enable=True, path=str(users)))


def test_ttl_cache_is_bounded_and_expires():
    now = [0.0]
    cache = TtlCache(3, 10.0, clock=lambda: now[0])
    for key in range(5):
        cache.put(key, key)
    assert len(cache) == 3 and cache.get(0) is None and cache.get(4) == 4
    now[0] = 11.0
    assert cache.get(4) is None


def test_flapping_window_ban_and_bounded_memory():
    now = [0.0]
    detector = FlappingDetector(FlappingDetect(enable=True, max_count=3, window_time=10, ban_time=30,
                                               max_tracked=100), Registry(), clock=lambda: now[0])
    assert [detector.connected("a") for _ in range(3)] == [False, False, True]
    assert detector.is_banned("a")
    now[0] = 31.0
    assert not detector.is_banned("a")
    # Connects spread beyond the window never ban.
    for step in range(10):
        now[0] = 100.0 + step * 6
        assert not detector.connected("b")
    for index in range(1000):
        detector.connected(f"random-{index}")
    assert len(detector.client_ids.windows) <= 100


def test_run_in_executor_keeps_the_loop_free(tmp_path):
    """A slow hash check does not block other work on the event loop."""
    users = tmp_path / "users.txt"
    users.write_text("alice:" + hashing.hash_password(b"pw", iterations=300_000) + "\n")
    authn = PasswordFileAuthenticator(PasswordFileAuthn(enable=True, path=str(users), reload_interval=0))

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)
        task = asyncio.get_running_loop().create_task(ticker())
        result = await authn.authenticate(ConnectInfo("c", "alice", b"pw", "t", None, 5))
        task.cancel()
        return result, ticks
    result, ticks = asyncio.run(main())
    assert result.decision == "allow"
    assert ticks >= 2  # the loop kept running while the hash was computed (blocking: at most 1)


def test_flapping_by_address_catches_rotating_and_empty_client_ids():
    now = [0.0]
    detector = FlappingDetector(FlappingDetect(enable=True, max_count=3, window_time=10, ban_time=30,
                                               max_tracked=100, address_max_count=4), Registry(),
                                clock=lambda: now[0])
    peer = ("192.0.2.7", 5000)
    assert [detector.refuses(cid, peer) for cid in ("a", "b", "", "")] == [False, False, False, True]
    assert detector.refuses("fresh", peer) and detector.refuses("", ("192.0.2.7", 6000))
    assert not detector.refuses("fresh", ("192.0.2.8", 5000))  # another address, an unbanned client id
    now[0] = 31.0
    assert not detector.refuses("again", peer)
    off = FlappingDetector(FlappingDetect(enable=True, max_count=3, address_max_count=0), Registry())
    assert not any(off.refuses(f"id-{n}", peer) for n in range(20))
