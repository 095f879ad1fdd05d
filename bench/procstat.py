"""Reading a process's CPU time and memory from /proc.

CPU is utime + stime from ``/proc/<pid>/stat`` (all threads of the process, in clock ticks); memory is
``VmRSS`` / ``VmHWM`` from ``/proc/<pid>/status``. CPU time is what the harness reports beside wall-clock
rates: on a shared machine it moves much less than the rates do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


class ProcReadError(RuntimeError):
    """The process is gone or its /proc entry could not be understood."""


@dataclass(frozen=True)
class CpuTimes:
    utime_ticks: int
    stime_ticks: int

    @property
    def seconds(self) -> float:
        return (self.utime_ticks + self.stime_ticks) / CLOCK_TICKS_PER_SECOND


def parse_stat(text: str) -> CpuTimes:
    """utime and stime (fields 14 and 15) of a ``/proc/<pid>/stat`` line.

    The command name (field 2) is in parentheses and may itself contain spaces and parentheses, so the
    fields are counted from the *last* ``)``.
    """
    close = text.rfind(")")
    if close < 0:
        raise ProcReadError(f"not a /proc stat line: {text[:80]!r}")
    rest = text[close + 1:].split()
    # rest[0] is field 3 (state); utime is field 14, stime field 15.
    if len(rest) < 13:
        raise ProcReadError(f"/proc stat line too short: {text[:80]!r}")
    try:
        return CpuTimes(int(rest[11]), int(rest[12]))
    except ValueError as exc:
        raise ProcReadError(f"bad utime/stime in /proc stat line: {text[:80]!r}") from exc


def parse_status_kib(text: str, key: str) -> int:
    """A ``kB`` value such as ``VmRSS`` from ``/proc/<pid>/status``, in KiB."""
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            parts = value.split()
            if len(parts) != 2 or parts[1] != "kB":
                raise ProcReadError(f"unexpected {key} line: {line!r}")
            return int(parts[0])
    raise ProcReadError(f"{key} not found in /proc status")


def _read(pid: int, name: str) -> str:
    try:
        with open(f"/proc/{pid}/{name}", encoding="ascii", errors="replace") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcReadError(f"process {pid} is gone") from exc


def cpu_times(pid: int) -> CpuTimes:
    return parse_stat(_read(pid, "stat"))


def cpu_seconds(pid: int) -> float:
    return cpu_times(pid).seconds


def rss_bytes(pid: int) -> int:
    return parse_status_kib(_read(pid, "status"), "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    return parse_status_kib(_read(pid, "status"), "VmHWM") * 1024
