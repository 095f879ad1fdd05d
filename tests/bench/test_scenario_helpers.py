"""Helpers of the scenarios that decide what a run reports."""

import os
import sys

import pytest

from bench import processes
from bench.scenarios import _client_utilisation, _clients_total_cpu, _write_within, all_scenarios


def test_a_stalled_pipe_reader_is_detected_instead_of_blocking_forever():
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        with pytest.raises(TimeoutError):
            _write_within(write_end, b"x" * (4 << 20), 0.2)  # more than any pipe buffer, and nobody reads
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_pipe_that_is_read_takes_everything():
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    _write_within(write_end, b"hello", 1.0)
    os.close(write_end)
    assert os.read(read_end, 100) == b"hello"
    os.close(read_end)


def test_client_cpu_figures_come_from_finished_children():
    burner = processes.Child([sys.executable, "-c", "sum(i * i for i in range(2_000_000))"], name="burner")
    idle = processes.Child(["sleep", "0.2"], name="idle")
    assert burner.wait(60) and idle.wait(60)
    busiest = _client_utilisation([burner, idle])
    assert busiest == pytest.approx(burner.cpu_seconds / (burner.exited_at - burner.started_at))
    assert _clients_total_cpu([burner, idle], 2.0) == pytest.approx((burner.cpu_seconds + idle.cpu_seconds) / 2.0)


def test_scenario_names_are_unique_and_cover_the_issue():
    names = [s.name for s in all_scenarios()]
    assert len(names) == len(set(names))
    for required in ("qos0", "qos1", "tls-qos0", "mtls-qos1", "fanout", "latency-qos0", "connect-tls-1",
                     "connect-tls-4", "memory-plain", "memory-tls", "rotation", "retained"):
        assert required in names


def test_too_few_clock_ticks_give_no_cpu_figure():
    from bench import procstat
    from bench.scenarios import MIN_CPU_TICKS, _cpu_or_none

    tick = 1 / procstat.CLOCK_TICKS_PER_SECOND
    notes: list[str] = []
    assert _cpu_or_none((MIN_CPU_TICKS - 1) * tick, notes) is None
    assert "resolution" in notes[0]
    notes.clear()
    assert _cpu_or_none(MIN_CPU_TICKS * tick, notes) == pytest.approx(MIN_CPU_TICKS * tick)
    assert notes == []


def test_retained_packets_are_well_formed_mqtt():
    from wharf_broker.mqtt.frame import Parser

    from bench import retained_load
    parser = Parser(version=4)
    data = (retained_load.publish_packet(retained_load.retained_topic(1234), b"v")
            + retained_load.subscribe_packet(7, "q/1/#", 0))
    publish, subscribe = parser.feed(data)
    assert (publish.topic, publish.payload, publish.retain, publish.qos) == ("r/1/1234", b"v", True, 0)
    assert subscribe.packet_id == 7 and [f for f, _ in subscribe.topics] == ["q/1/#"]
