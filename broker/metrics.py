"""A small Prometheus metrics registry.

Kept dependency-free and cheap: a labelled child is looked up once and then incremented with a plain
attribute add, so hot paths hold on to the child (``refused = CONNECTIONS_REFUSED.labels(listener="tcp:default")``)
instead of resolving labels per event.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 2**53):
        return str(int(value))
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Child:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float) -> None:
        self.value = value


class Metric:
    """A counter or gauge family, optionally labelled."""

    kind = "untyped"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = ()) -> None:
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _Child] = {}
        if not self.labelnames:
            self._children[()] = _Child()

    def labels(self, **labels: str) -> _Child:
        key = tuple(str(labels[name]) for name in self.labelnames)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = _Child()
        return child

    def remove(self, **labels: str) -> None:
        self._children.pop(tuple(str(labels[name]) for name in self.labelnames), None)

    # Unlabelled shortcuts.
    def inc(self, amount: float = 1) -> None:
        self._children[()].value += amount

    def set(self, value: float) -> None:
        self._children[()].value = value

    @property
    def value(self) -> float:
        return self._children[()].value

    def samples(self) -> Iterable[tuple[dict[str, str], float]]:
        for key, child in list(self._children.items()):
            yield dict(zip(self.labelnames, key)), child.value


class Counter(Metric):
    kind = "counter"


class Gauge(Metric):
    kind = "gauge"


class CallbackGauge(Metric):
    """A gauge whose samples are computed when scraped (e.g. current connections per listener)."""

    kind = "gauge"

    def __init__(self, name: str, help: str, labelnames: Iterable[str],
                 collect: Callable[[], Iterable[tuple[dict[str, str], float]]]) -> None:
        super().__init__(name, help, labelnames)
        self._collect = collect

    def samples(self) -> Iterable[tuple[dict[str, str], float]]:
        return self._collect()


class Registry:
    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}

    def register(self, metric: Metric) -> Metric:
        existing = self._metrics.get(metric.name)
        if existing is not None:
            return existing
        self._metrics[metric.name] = metric
        return metric

    def counter(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Counter:
        return self.register(Counter(name, help, labelnames))  # type: ignore[return-value]

    def gauge(self, name: str, help: str, labelnames: Iterable[str] = ()) -> Gauge:
        return self.register(Gauge(name, help, labelnames))  # type: ignore[return-value]

    def get(self, name: str) -> Metric | None:
        return self._metrics.get(name)

    def exposition(self) -> str:
        """Prometheus text format 0.0.4."""
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            for labels, value in metric.samples():
                if labels:
                    rendered = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                    lines.append(f"{metric.name}{{{rendered}}} {_format_value(value)}")
                else:
                    lines.append(f"{metric.name} {_format_value(value)}")
        return "\n".join(lines) + "\n"


# One registry per process: the broker is one process, and tests that need isolation build their own.
REGISTRY = Registry()
