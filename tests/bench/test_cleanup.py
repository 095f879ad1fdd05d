"""Ctrl-C in the middle of a run: the harness ends every process it started and still prints its table."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bench.brokers import REPO_ROOT

pytestmark = pytest.mark.skipif(not (shutil.which("mosquitto") and shutil.which("mosquitto_sub")),
                                reason="needs the Debian packages mosquitto and mosquitto-clients")


def _children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
            found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_sigint_during_a_run_ends_every_child():
    harness = subprocess.Popen([sys.executable, "-m", "bench", "--brokers", "mosquitto", "--scenarios",
                                "latency-qos0", "--latency-messages", "20000", "--repeats", "1"],
                               cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Wait until the broker and the clients of the latency run are up (bounded by count, not asserted on time).
        children: set[int] = set()
        for _ in range(300):
            children = _children_of(harness.pid)
            if len(children) >= 3:  # mosquitto, mosquitto_sub, mosquitto_pub
                break
            time.sleep(0.05)
        assert len(children) >= 3, "the run did not start"
        harness.send_signal(signal.SIGINT)
        out, err = harness.communicate(timeout=60)
    finally:
        if harness.poll() is None:
            harness.kill()
    assert harness.returncode == 130, err
    assert "interrupted" in err
    assert "## Wharf benchmark" in out and "interrupted" in out
    assert [pid for pid in children if _alive(pid)] == []
