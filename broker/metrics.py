"""A small Prometheus metrics registry.

Kept dependency-free and cheap: a labelled child is looked up once and then incremented with a plain
attribute add, so hot paths hold on to the child (``refused = CONNECTIONS_REFUSED.labels(listener="tcp:default")``)
instead of resolving labels per event.
"""

from __future__ import annotations

import bisect
import math
from typing import Callable, Iterable

# Prometheus client libraries' default buckets (seconds): a few milliseconds to ten seconds.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


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

    def remove_matching(self, **labels: str) -> int:
        """Drop every child whose labels include ``labels`` (e.g. all listeners of one deleted broker)."""
        positions = [(self.labelnames.index(name), str(value)) for name, value in labels.items()]
        gone = [key for key in self._children if key and all(key[i] == value for i, value in positions)]
        for key in gone:
            del self._children[key]
        return len(gone)

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


class _HistogramChild:
    """Per-bucket counts (not cumulative: one increment per observation); cumulated when scraped."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last slot is +Inf
        self.sum: float = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # bucket le=bound holds value <= bound
        self.sum += value
        self.count += 1


class Histogram(Metric):
    """A histogram family: ``<name>_bucket{le=...}`` (cumulative), ``<name>_sum`` and ``<name>_count``.

    ``observe`` costs one bisection over the bounds and three additions; cumulating happens at scrape time."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labelnames: Iterable[str] = (),
                 buckets: Iterable[float] = DEFAULT_BUCKETS) -> None:
        bounds = tuple(sorted(float(b) for b in buckets if not math.isinf(b)))
        if not bounds:
            raise ValueError("a histogram needs at least one finite bucket bound")
        if "le" in tuple(labelnames):
            raise ValueError("'le' is reserved for histogram buckets")
        self.bounds = bounds
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _HistogramChild] = {}  # type: ignore[assignment]
        if not self.labelnames:
            self._children[()] = _HistogramChild(bounds)

    def labels(self, **labels: str) -> _HistogramChild:  # type: ignore[override]
        key = tuple(str(labels[name]) for name in self.labelnames)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = _HistogramChild(self.bounds)
        return child

    def observe(self, value: float) -> None:
        self._children[()].observe(value)

    def lines(self) -> Iterable[str]:
        """The exposition lines of every child (bucket, sum and count series)."""
        for key, child in list(self._children.items()):
            base = [f'{k}="{_escape(v)}"' for k, v in zip(self.labelnames, key)]
            cumulative = 0
            for bound, count in zip((*child.bounds, math.inf), child.counts):
                cumulative += count
                le = ",".join([*base, f'le="{_format_value(bound)}"'])
                yield f"{self.name}_bucket{{{le}}} {cumulative}"
            suffix = f"{{{','.join(base)}}}" if base else ""
            yield f"{self.name}_sum{suffix} {_format_value(child.sum)}"
            yield f"{self.name}_count{suffix} {child.count}"


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

    def histogram(self, name: str, help: str, labelnames: Iterable[str] = (),
                  buckets: Iterable[float] = DEFAULT_BUCKETS) -> Histogram:
        return self.register(Histogram(name, help, labelnames, buckets))  # type: ignore[return-value]

    def names(self) -> list[str]:
        """Every series name the exposition can carry (a histogram's _bucket, _sum and _count)."""
        out: list[str] = []
        for metric in self._metrics.values():
            if isinstance(metric, Histogram):
                out.extend(f"{metric.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
            else:
                out.append(metric.name)
        return out

    def get(self, name: str) -> Metric | None:
        return self._metrics.get(name)

    def exposition(self) -> str:
        """Prometheus text format 0.0.4."""
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            if isinstance(metric, Histogram):
                lines.extend(metric.lines())
                continue
            for labels, value in metric.samples():
                if labels:
                    rendered = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                    lines.append(f"{metric.name}{{{rendered}}} {_format_value(value)}")
                else:
                    lines.append(f"{metric.name} {_format_value(value)}")
        return "\n".join(lines) + "\n"


# One registry per process: the broker is one process, and tests that need isolation build their own.
REGISTRY = Registry()
