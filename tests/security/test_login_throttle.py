"""Failed logins are throttled per source address and per user name, password hashes run on the password
file's own bounded thread pool (security issue #14, item 7), on a real broker process and in process."""

from __future__ import annotations

import asyncio
import threading

from wharf_broker.auth import ConnectInfo
from wharf_broker.authn import hashing
from wharf_broker.authn.password_file import PasswordFileAuthenticator
from wharf_broker.authn.throttle import LoginThrottler
from wharf_broker.config.model import LoginThrottle, PasswordFileAuthn
from wharf_broker.metrics import Registry
from wharf_broker.mqtt import reason_codes as rc

from .conftest import metric
from tests.support.wire import connack_code

ATTACKER = "127.0.0.2"
ELSEWHERE = "127.0.0.3"


async def test_failed_logins_back_off_per_address_and_user_name(broker_process, user_file):
    broker = broker_process(f"""
listeners.tcp.default {{ bind = "127.0.0.1:0" }}
dashboard.listeners.http.bind = "127.0.0.1:0"
authentication {{
  allow_anonymous = false
  password_file {{ enable = true, path = "{user_file}" }}
  login_throttle {{ allowed_failures = 2, initial_backoff = 2s, max_backoff = 2s, refusal_delay = 0 }}
}}
""")
    port = broker.port("tcp:default")
    wrong = [await connack_code(port, f"a{n}", local=ATTACKER, username="alice", password=b"guess-" + bytes([48 + n]))
             for n in range(3)]
    assert wrong == [rc.BAD_USER_NAME_OR_PASSWORD] * 3  # the third failure starts the backoff
    # While backing off: refused at once, whatever the password, without a check.
    assert await connack_code(port, "a3", local=ATTACKER, username="alice", password=b"wonderland") == \
        rc.CONNECTION_RATE_EXCEEDED
    assert await connack_code(port, "a4", local=ATTACKER, username="bob", password=b"builder") == \
        rc.CONNECTION_RATE_EXCEEDED  # the address backs off, for every user name
    assert await connack_code(port, "a5", local=ATTACKER, username="bob", password=b"builder", version=4) == 3
    # The user name backs off too, from any address, but only as long as its backoff.
    assert await connack_code(port, "alice-1", local=ELSEWHERE, username="alice", password=b"wonderland") == \
        rc.CONNECTION_RATE_EXCEEDED
    assert await connack_code(port, "bob-1", local=ELSEWHERE, username="bob", password=b"builder") == 0
    await asyncio.sleep(2.2)  # the 2 s backoff of the user name ends
    assert await connack_code(port, "alice-2", local=ELSEWHERE, username="alice", password=b"wonderland") == 0

    _, body = broker.admin("GET", "/metrics")
    text = body.decode()
    assert metric(text, "wharf_authn_throttled_total", key="address") == 3
    assert metric(text, "wharf_authn_throttled_total", key="username") == 1
    assert metric(text, "wharf_authn_backoffs_total", key="address") == 1
    assert metric(text, "wharf_authn_backoffs_total", key="username") == 1
    assert "backs off" in broker.log and "guess-" not in broker.log and "wonderland" not in broker.log


def test_throttle_backoff_doubles_up_to_the_cap_and_success_clears_it():
    now = [0.0]
    throttle = LoginThrottler(LoginThrottle(allowed_failures=1, initial_backoff=1, max_backoff=4, forget_after=100,
                                            max_tracked=10), Registry(), clock=lambda: now[0])
    def wait() -> float:
        seconds = throttle.admit("10.0.0.1", None)
        if not seconds:
            throttle.release("10.0.0.1", None)
        return seconds
    waits = []
    for _ in range(5):
        assert wait() == 0
        throttle.failed("10.0.0.1", None)
        waits.append(wait())
        now[0] += 10
    assert waits == [0, 1, 2, 4, 4]
    throttle.succeeded("10.0.0.1", None)
    # No recent failure: logins from one address are checked side by side (a fleet behind one NAT address).
    assert throttle.admit("10.0.0.1", None) == 0
    assert throttle.admit("10.0.0.1", None) == 0
    throttle.release("10.0.0.1", None)
    throttle.release("10.0.0.1", None)
    # After a failure, one check in flight per address at most (max_pending_checks = 1): a burst is not all hashed.
    throttle.failed("10.0.0.1", None)
    now[0] += 10  # past the backoff (allowed_failures = 1 blocked it), the failure still counted
    assert throttle.admit("10.0.0.1", None) == 0
    assert throttle.admit("10.0.0.1", None) == -1
    throttle.release("10.0.0.1", None)
    for n in range(50):  # bounded memory
        throttle.failed(f"10.1.0.{n}", None)
    assert len(throttle.addresses.entries) <= 10


def test_hashes_run_on_the_bounded_pool_and_a_full_queue_answers_server_busy(tmp_path, monkeypatch):
    users = tmp_path / "users.txt"
    users.write_text("alice:" + hashing.hash_password(b"pw", iterations=1000) + "\n")
    threads: list[str] = []
    release = threading.Event()
    real_verify = hashing.verify_password

    def verify(password, encoded):
        threads.append(threading.current_thread().name)
        release.wait(10)
        return real_verify(password, encoded)
    monkeypatch.setattr(hashing, "verify_password", verify)
    authn = PasswordFileAuthenticator(PasswordFileAuthn(enable=True, path=str(users), reload_interval=0,
                                                        hash_workers=1, hash_queue_size=1))

    async def main():
        info = ConnectInfo("c", "alice", b"wrong", "t", None, 5)
        checks = [asyncio.ensure_future(authn.authenticate(info)) for _ in range(2)]
        await asyncio.sleep(0.2)
        busy = await authn.authenticate(info)  # one running, one waiting: the third is refused at once
        release.set()
        results = await asyncio.gather(*checks)
        await authn.stop()
        return busy, results
    busy, results = asyncio.run(main())
    assert busy.reason_code == rc.SERVER_BUSY
    assert [r.reason_code for r in results] == [rc.BAD_USER_NAME_OR_PASSWORD] * 2
    assert threads and all(name.startswith("wharf-hash") for name in threads), threads
    assert threading.main_thread().name not in threads


def test_a_throttled_connect_is_answered_after_the_refusal_delay_without_asking_the_hooks(monkeypatch):
    from wharf_broker import auth

    now = [0.0]
    throttle = LoginThrottler(LoginThrottle(allowed_failures=0, initial_backoff=30, max_backoff=30,
                                            refusal_delay=1.5), Registry(), clock=lambda: now[0])
    asked = []

    class Hook:
        async def authenticate(self, info):
            asked.append(info.username)
            return auth.AuthResult.deny(rc.BAD_USER_NAME_OR_PASSWORD, "bad user name or password")
    slept = []

    async def fake_sleep(seconds):
        slept.append(seconds)
    monkeypatch.setattr(auth.asyncio, "sleep", fake_sleep)
    chain = auth.AuthChain(False, [Hook()], throttle)
    info = ConnectInfo("c", "mallory", b"guess", "t", ("198.51.100.9", 4000), 5)
    first = asyncio.run(chain.authenticate(info))
    second = asyncio.run(chain.authenticate(info))
    assert first.reason_code == rc.BAD_USER_NAME_OR_PASSWORD and second.reason_code == rc.CONNECTION_RATE_EXCEEDED
    assert asked == ["mallory"] and slept == [1.5]
