"""The results table: medians per broker and Wharf's ratio to each peer, as Markdown, plus the run's context."""

from __future__ import annotations

import os
import platform
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.scenarios import Metric, RunResult, Scenario
from bench.stats import format_ratio, format_value, median, ratio

SUBJECT = "wharf"


@dataclass
class Outcome:
    """Every run of one scenario against one broker."""

    results: list[RunResult] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    skipped: str | None = None

    def values(self, key: str) -> list[float]:
        return [r.values[key] for r in self.results if r.values.get(key) is not None]


def machine_description() -> list[str]:
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB RAM"
                    break
    except (OSError, ValueError, IndexError):
        pass
    return [f"{os.cpu_count()} × {model}"] + ([memory] if memory else []) + [f"Linux {platform.release()}",
            f"Python {platform.python_version()}", ssl.OPENSSL_VERSION]


def _cell(metric: Metric, values: Sequence[float]) -> float | None:
    """The median of the runs; for must-be-zero counts the worst run (higher is worse for all of them)."""
    value = (max(values) if values else None) if metric.worst_case else median(values)
    return None if value is None else value * metric.scale


def render_table(scenarios: Sequence[Scenario], brokers: Sequence[str],
                 outcomes: dict[tuple[str, str], Outcome]) -> str:
    """A Markdown table: scenario, metric, one median per broker, Wharf's ratio to each peer."""
    peers = [b for b in brokers if b != SUBJECT]
    show_ratios = SUBJECT in brokers
    header = ["scenario", "metric"] + brokers + ([f"{SUBJECT}/{p}" for p in peers] if show_ratios else [])
    rows = [header, ["---"] * len(header)]
    for scenario in scenarios:
        for metric in scenario.metrics:
            medians = {}
            for broker in brokers:
                outcome = outcomes.get((scenario.name, broker), Outcome())
                medians[broker] = _cell(metric, outcome.values(metric.key))
            if all(v is None for v in medians.values()):
                continue
            unit = metric.unit
            row = [scenario.name, f"{metric.label}" + (f" ({unit})" if unit else "")]
            for broker in brokers:
                outcome = outcomes.get((scenario.name, broker), Outcome())
                text = format_value(medians[broker], "", metric.integer)
                if outcome.skipped and medians[broker] is None:
                    text = "n/a"
                elif outcome.failures and medians[broker] is None:
                    text = "failed"
                elif any(not r.complete for r in outcome.results):
                    text += " *"
                row.append(text)
            if show_ratios:
                row += [format_ratio(ratio(medians[SUBJECT], medians[p])) for p in peers]
            rows.append(row)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def render_notes(scenarios: Sequence[Scenario], brokers: Sequence[str],
                 outcomes: dict[tuple[str, str], Outcome]) -> str:
    lines = []
    for scenario in scenarios:
        for broker in brokers:
            outcome = outcomes.get((scenario.name, broker))
            if not outcome:
                continue
            if outcome.skipped:
                lines.append(f"- {scenario.name} / {broker}: not run: {outcome.skipped}")
            for failure in outcome.failures:
                lines.append(f"- {scenario.name} / {broker}: FAILED: {failure}")
            for index, result in enumerate(outcome.results):
                if result.note:
                    mark = "" if result.complete else " (*)"
                    lines.append(f"- {scenario.name} / {broker} run {index + 1}{mark}: {result.note}")
    return "\n".join(lines)


def render_legend(scenarios: Sequence[Scenario]) -> str:
    return "\n".join(f"- `{s.name}`: {s.description}" for s in scenarios)


def command_line() -> str:
    return " ".join(["python -m bench"] + sys.argv[1:])
