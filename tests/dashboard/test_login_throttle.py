"""Failed Dashboard logins against a real broker: throttled per (user name, address) and per address with
exponential backoff, never locking a correct login out for longer than the current backoff, and a local process
guessing one name's password does not lock out another name (the token login). A paho QoS 1 client runs
alongside and loses nothing."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from .conftest import PASSWORD, TOKEN, HttpSession, broker_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
from qos1_witness import PahoQos1Witness  # noqa: E402


def logins(broker, result: str) -> float:
    _, body = broker.admin("GET", "/metrics")
    match = re.search(r'^wharf_dashboard_logins_total\{result="' + result + r'"\} (\S+)$', body.decode(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_one_names_failures_do_not_lock_out_another_name(broker_process, pki, tmp_path):
    throttle = "login_throttle { max_failures_per_user = 5, max_failures_per_address = 20, initial_backoff = 1m }"
    broker = broker_process(broker_config(pki, tmp_path / "uploads", throttle), token=TOKEN)
    session = HttpSession(broker.admin_url)
    with PahoQos1Witness(broker.port("tcp:default")) as witness:
        for _ in range(5):
            assert session.login(password="guess")[0] == 401
        status, headers, page = session.login()  # admin's right password now waits for admin's backoff
        assert status == 429 and "Too many failed logins for this user name from this address" in page
        assert 1 <= int(headers["Retry-After"]) <= 60
        # The token login, under another user name, from the same address: not affected.
        other = HttpSession(broker.admin_url)
        status, headers, _ = other.login(username="ops", password=TOKEN)
        assert status == 303 and headers["Location"] == "/dashboard/"
    assert witness.report["acked"] > 0 and witness.report["lost"] == 0, witness.report
    assert logins(broker, "failed") == 5 and logins(broker, "throttled_user") == 1 and logins(broker, "ok") == 1
    assert "failed login for 'admin' from 127.0.0.1" in broker.log and "guess" not in broker.log


def test_a_correct_login_waits_no_longer_than_the_backoff(broker_process, pki, tmp_path):
    throttle = ("login_throttle { max_failures_per_user = 3, max_failures_per_address = 1000, "
                "initial_backoff = 100ms, max_backoff = 500ms }")
    broker = broker_process(broker_config(pki, tmp_path / "uploads", throttle), token=TOKEN)
    attacker = HttpSession(broker.admin_url)
    # A local process keeps guessing admin's password as fast as it can: most attempts are refused unseen.
    answers = [attacker.login(password=f"guess-{index}")[0] for index in range(60)]
    assert set(answers) <= {401, 429} and answers.count(401) >= 3 and 429 in answers
    # It stops; the admin comes after the longest backoff (500 ms) and is let in.
    time.sleep(0.6)
    status, headers, _ = HttpSession(broker.admin_url).login(password=PASSWORD)
    assert status == 303 and headers["Location"] == "/dashboard/"
    assert logins(broker, "throttled_user") == answers.count(429)


def test_spraying_user_names_throttles_the_address(broker_process, pki, tmp_path):
    throttle = "login_throttle { max_failures_per_user = 5, max_failures_per_address = 8, initial_backoff = 1m }"
    broker = broker_process(broker_config(pki, tmp_path / "uploads", throttle), token=TOKEN)
    session = HttpSession(broker.admin_url)
    for index in range(8):
        assert session.login(username=f"user{index}", password="guess")[0] == 401
    status, _, page = session.login(username="ops", password=TOKEN)
    assert status == 429 and "Too many failed logins for this address" in page
    assert logins(broker, "throttled_address") == 1
