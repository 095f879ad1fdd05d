"""Reading CPU time and memory from /proc: the parsing, and the real numbers of this very process."""

import os

import pytest

from bench import procstat

STAT_LINE = ("4242 (we ird) (name)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 "
             "321 123 0 0 20 0 3 0 100 123456789 2500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0")


def test_stat_fields_are_counted_from_the_last_parenthesis():
    times = procstat.parse_stat(STAT_LINE)
    assert (times.utime_ticks, times.stime_ticks) == (321, 123)
    assert times.seconds == pytest.approx(444 / procstat.CLOCK_TICKS_PER_SECOND)


@pytest.mark.parametrize("line", ["", "4242 no parentheses at all", "4242 (x) S 1 2 3"])
def test_malformed_stat_lines_are_refused(line):
    with pytest.raises(procstat.ProcReadError):
        procstat.parse_stat(line)


def test_status_values_in_kib():
    text = "Name:\tpython\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\nThreads:\t1\n"
    assert procstat.parse_status_kib(text, "VmRSS") == 10240
    assert procstat.parse_status_kib(text, "VmHWM") == 20480
    with pytest.raises(procstat.ProcReadError):
        procstat.parse_status_kib(text, "VmSwap")
    with pytest.raises(procstat.ProcReadError):
        procstat.parse_status_kib("VmRSS:\t12 pages\n", "VmRSS")


def test_cpu_time_of_a_live_process_grows_while_it_computes():
    before = procstat.cpu_seconds(os.getpid())
    spins = 0
    # Bounded by work, not by time: a clock tick is at most 10 ms of CPU, far below this many iterations' worth.
    while procstat.cpu_seconds(os.getpid()) <= before and spins < 50:
        sum(i * i for i in range(200_000))
        spins += 1
    assert procstat.cpu_seconds(os.getpid()) > before


def test_rss_grows_by_the_memory_this_process_touches():
    before = procstat.rss_bytes(os.getpid())
    block = bytearray(64 * 1024 * 1024)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    after = procstat.rss_bytes(os.getpid())
    assert after - before >= 48 * 1024 * 1024
    assert procstat.peak_rss_bytes(os.getpid()) >= after
    del block


def test_a_vanished_process_is_a_clear_error():
    with pytest.raises(procstat.ProcReadError, match="gone"):
        procstat.cpu_seconds(2 ** 22 + 12345)
