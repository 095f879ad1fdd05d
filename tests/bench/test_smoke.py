"""End to end: the harness itself, with tiny counts, against mosquitto (and Wharf), as real processes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.brokers import REPO_ROOT

pytestmark = pytest.mark.skipif(not (shutil.which("mosquitto") and shutil.which("mosquitto_sub")),
                                reason="needs the Debian packages mosquitto and mosquitto-clients")


def _run(tmp_path, brokers: str, scenarios: str) -> dict:
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--brokers", brokers, "--scenarios", scenarios,
                           "--repeats", "1", "--messages", "2000", "--connections", "20", "--idle-connections", "30",
                           "--latency-messages", "100", "--rotations", "1", "--rotation-publishers", "3",
                           "--run-timeout", "20", "--json", str(out)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def test_every_kind_of_scenario_measures_mosquitto(tmp_path):
    result = _run(tmp_path, "mosquitto", "qos1,fanout,latency-qos0,connect-tls-1,memory-tls,rotation")
    runs = result["runs"]
    for key, outcome in runs.items():
        assert outcome["failures"] == [], key
        assert len(outcome["results"]) == 1, key
    assert runs["qos1/mosquitto"]["results"][0]["complete"]
    assert runs["qos1/mosquitto"]["results"][0]["values"]["rate"] > 0
    assert runs["fanout/mosquitto"]["results"][0]["complete"]
    latency = runs["latency-qos0/mosquitto"]["results"][0]["values"]
    assert latency["lost"] == 0 and 0 < latency["p50"] <= latency["p99"]
    assert runs["connect-tls-1/mosquitto"]["results"][0]["values"]["rate"] > 0
    assert runs["memory-tls/mosquitto"]["results"][0]["values"]["bytes_per_conn"] > 0
    rotation = runs["rotation/mosquitto"]["results"][0]["values"]
    assert rotation["lost"] == 0 and rotation["unseen"] == 0


def test_wharf_runs_beside_mosquitto(tmp_path):
    result = _run(tmp_path, "wharf,mosquitto", "qos0,memory-plain")
    for broker in ("wharf", "mosquitto"):
        outcome = result["runs"][f"qos0/{broker}"]
        assert outcome["failures"] == [] and outcome["results"][0]["complete"], broker
    # With the idle connections held, Wharf's admin API is timed for one page of clients and a search.
    memory = result["runs"]["memory-plain/wharf"]
    assert memory["failures"] == []
    values = memory["results"][0]["values"]
    assert values["clients_page"] > 0 and values["clients_search"] > 0
    assert set(result["runs"]["memory-plain/mosquitto"]["results"][0]["values"]) == {"bytes_per_conn"}


def test_retained_scenario_times_subscribe_at_each_size_on_both_brokers(tmp_path):
    out = tmp_path / "retained.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--brokers", "wharf,mosquitto", "--scenarios", "retained",
                           "--repeats", "1", "--retained-sizes", "0,3000", "--retained-subscribes", "20",
                           "--run-timeout", "30", "--json", str(out)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "SUBSCRIBE at 3k retained" in proc.stdout
    for broker in ("wharf", "mosquitto"):
        outcome = json.loads(out.read_text())["runs"][f"retained/{broker}"]
        assert outcome["failures"] == [], broker
        [run] = outcome["results"]
        assert run["complete"]
        assert set(run["values"]) == {"subscribe_0", "subscribe_3000", "full_match", "ping_max"}
        assert all(value > 0 for value in run["values"].values())


def test_scale_scenario_holds_each_step_from_several_source_addresses_on_both_brokers(tmp_path):
    out = tmp_path / "scale.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--brokers", "wharf,mosquitto",
                           "--scenarios", "scale,connect-plain-4", "--repeats", "1", "--scale-steps", "100,250",
                           "--connections", "40", "--run-timeout", "60", "--json", str(out), "--keep"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "RSS per connection at 250" in proc.stdout
    runs = json.loads(out.read_text())["runs"]
    for broker in ("wharf", "mosquitto"):
        outcome = runs[f"scale/{broker}"]
        assert outcome["failures"] == [], broker
        [run] = outcome["results"]
        assert run["complete"], run["note"]
        values = run["values"]
        for step in (100, 250):
            assert values[f"rss_per_conn_{step}"] > 0 and values[f"cpu_per_connect_{step}"] >= 0
            assert values[f"idle_cpu_{step}"] >= 0
        assert 0 < values["rtt_median"] <= values["rtt_p99"]
        connect = runs[f"connect-plain-4/{broker}"]
        assert connect["failures"] == [] and connect["results"][0]["values"]["rate"] > 0, broker
    # One holder for the warm-up and one for each step (each from its own loopback source address).
    workdir = proc.stderr.rsplit("work directory kept: ", 1)[1].split()[0]
    try:
        holders = sorted(p.name for p in Path(workdir).glob("r1-scale-mosquitto/holder*.out"))
        assert holders == ["holder0.out", "holder1.out", "holder2.out"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
