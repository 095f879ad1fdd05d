"""The metrics registry's histogram (Prometheus text format) and the operator's per-listener series."""

from __future__ import annotations

import datetime

import pytest
from wharf_broker.metrics import Histogram, Registry
from wharf_operator.metrics import OperatorMetrics


def _series(text: str) -> dict[str, str]:
    return {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in text.splitlines() if not line.startswith("#")}


def test_histogram_exposes_cumulative_buckets_sum_and_count():
    registry = Registry()
    latency = registry.histogram("op_seconds", "Seconds an operation took.", ["kind"], buckets=[1, 0.5, 5])
    child = latency.labels(kind="a")
    for value in (0.1, 0.5, 0.7, 3, 100):
        child.observe(value)
    text = registry.exposition()
    assert "# TYPE op_seconds histogram" in text
    series = _series(text)
    # A value equal to a bound falls in that bound's bucket (le means "less than or equal").
    assert series['op_seconds_bucket{kind="a",le="0.5"}'] == "2"
    assert series['op_seconds_bucket{kind="a",le="1"}'] == "3"
    assert series['op_seconds_bucket{kind="a",le="5"}'] == "4"
    assert series['op_seconds_bucket{kind="a",le="+Inf"}'] == "5"
    assert float(series['op_seconds_sum{kind="a"}']) == pytest.approx(104.3)
    assert series['op_seconds_count{kind="a"}'] == "5"
    # The bucket lines come in increasing order of le, as Prometheus expects.
    order = [line for line in text.splitlines() if line.startswith("op_seconds_bucket")]
    assert [line.split('le="')[1].split('"')[0] for line in order] == ["0.5", "1", "5", "+Inf"]


def test_unlabelled_histogram_and_registered_names():
    registry = Registry()
    hist = registry.histogram("h_seconds", "h")
    registry.counter("c_total", "c")
    hist.observe(0.003)
    series = _series(registry.exposition())
    assert series['h_seconds_bucket{le="0.005"}'] == "1" and series["h_seconds_count"] == "1"
    assert series["h_seconds_sum"] == "0.003"
    assert registry.names() == ["h_seconds_bucket", "h_seconds_sum", "h_seconds_count", "c_total"]


def test_histogram_refuses_le_label_and_no_buckets():
    with pytest.raises(ValueError):
        Histogram("x", "x", ["le"])
    with pytest.raises(ValueError):
        Histogram("x", "x", buckets=[float("inf")])


def test_remove_matching_drops_only_one_brokers_series():
    registry = Registry()
    gauge = registry.gauge("g", "g", ["namespace", "broker", "listener"])
    gauge.labels(namespace="n", broker="a", listener="x").set(1)
    gauge.labels(namespace="n", broker="a", listener="y").set(1)
    gauge.labels(namespace="n", broker="b", listener="x").set(1)
    assert gauge.remove_matching(namespace="n", broker="a") == 2
    assert [labels for labels, _ in gauge.samples()] == [{"namespace": "n", "broker": "b", "listener": "x"}]


def test_operator_metrics_forget_and_retain():
    metrics = OperatorMetrics()
    not_after = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
    for broker, listener in (("a", "mqtts"), ("a", "wss"), ("b", "mqtts")):
        metrics.observed("ns", broker, listener, not_after=not_after, not_serving=1, pending_since=5.0)
    assert metrics.certificate_not_after.labels(namespace="ns", broker="a", listener="mqtts").value == 1893456000
    metrics.retain("ns", "a", {"mqtts"})  # the spec dropped listener wss
    text = metrics.registry.exposition()
    assert 'listener="wss"' not in text and 'broker="a",listener="mqtts"' in text
    metrics.forget("ns", "a")
    text = metrics.registry.exposition()
    assert 'broker="a"' not in text and 'broker="b"' in text
