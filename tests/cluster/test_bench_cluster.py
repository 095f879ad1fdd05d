"""The benchmark's cross-node scenario runs end to end (small counts) and reports complete runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import require_nats

pytestmark = pytest.mark.timeout(240)

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not shutil.which("mosquitto_pub"), reason="mosquitto-clients is not installed")
def test_cross_node_scenario_reports_single_and_cross_rates_and_latencies(tmp_path):
    require_nats()
    out = tmp_path / "cluster.json"
    result = subprocess.run([sys.executable, "-m", "bench.cluster", "--messages", "2000", "--latency-messages",
                             "100", "--latency-rate", "200", "--run-timeout", "40", "--json", str(out)],
                            capture_output=True, text=True, timeout=220, check=False, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads(out.read_text())
    assert sorted(results) == ["cross-qos0", "cross-qos1", "single-qos0", "single-qos1"]
    for key, values in results.items():
        assert values["complete"] and values["rate"] > 0, key
        assert values["received"] == 100, key
        assert 0 < values["p50_ms"] <= values["p99_ms"] <= values["max_ms"], key
    assert "| cross | 1 |" in result.stdout
