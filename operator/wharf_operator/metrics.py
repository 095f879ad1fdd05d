"""The operator's Prometheus metrics (text format, served by ``cli.py``).

What users alert on (the chart's PrometheusRule names these series; a test checks they exist here):
``wharf_operator_certificate_not_after_seconds`` (expiry per listener), ``wharf_operator_pods_not_serving``
(pods that answered with another certificate than the listener's valid Secret, or did not answer) and
``wharf_operator_rotation_pending_since_seconds`` (a Secret change not yet served by every pod). Per-listener
series are dropped when their MQTTBroker is deleted, so a deleted broker never keeps an alert firing.
"""

from __future__ import annotations

import datetime

from wharf_broker.metrics import Registry

# Seconds: an apply round trip is tens of milliseconds; a rotation waits for the kubelet to project a Secret
# (a minute or more) and ``reload_wait`` (90 s by default).
RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ROTATION_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0)
LISTENER_LABELS = ["namespace", "broker", "listener"]


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = Registry()
        self.reconciles = self.registry.counter(
            "wharf_operator_reconciles_total", "MQTTBroker reconciliations, by result.", ["result"])
        self.reconcile_seconds = self.registry.histogram(
            "wharf_operator_reconcile_seconds", "Seconds one MQTTBroker reconciliation took (apply and status).",
            buckets=RECONCILE_BUCKETS)
        self.errors = self.registry.counter(
            "wharf_operator_errors_total", "Errors in the operator's handlers, by handler.", ["handler"])
        self.rotations = self.registry.counter(
            "wharf_operator_rotations_total",
            "Certificate rotations signalled to brokers, by result (complete, incomplete, refused).", ["result"])
        # Keeps the names wharf_operator_rotation_seconds_sum and _count the operator exported before as counters.
        self.rotation_seconds = self.registry.histogram(
            "wharf_operator_rotation_seconds",
            "Seconds from the Secret change the operator saw to every pod answering that it serves the new "
            "certificate.", buckets=ROTATION_BUCKETS)
        self.drift_repairs = self.registry.counter(
            "wharf_operator_drift_repairs_total",
            "Owned objects created or changed back to what an already reconciled spec says (deleted or edited by "
            "hand), by kind.", ["kind"])
        self.field_conflicts = self.registry.counter(
            "wharf_operator_field_conflicts_total",
            "Server-side applies refused because another field manager changed a field the operator owns, by kind.",
            ["kind"])
        self.watch_events = self.registry.counter(
            "wharf_operator_watch_events_total",
            "Secret and ConfigMap watch events the operator received (the initial listing aside), by kind and by "
            "whether an MQTTBroker references or owns the object (relevant=false: streamed and parsed for "
            "nothing).", ["kind", "relevant"])
        self.last_rotation_seconds = self.registry.gauge(
            "wharf_operator_last_rotation_seconds", "Seconds the last rotation of a listener took.", LISTENER_LABELS)
        self.pods_not_serving = self.registry.gauge(
            "wharf_operator_pods_not_serving",
            "Broker pods that did not answer serving the listener's current certificate when last signalled or "
            "checked.", LISTENER_LABELS)
        self.certificate_not_after = self.registry.gauge(
            "wharf_operator_certificate_not_after_seconds",
            "notAfter of the server certificate in the listener's Secret, seconds since the epoch.", LISTENER_LABELS)
        self.rotation_pending_since = self.registry.gauge(
            "wharf_operator_rotation_pending_since_seconds",
            "When the operator saw a Secret change that not every pod serves yet, seconds since the epoch; 0 when "
            "every pod serves the listener's certificate.", LISTENER_LABELS)
        self._per_listener = (self.last_rotation_seconds, self.pods_not_serving, self.certificate_not_after,
                              self.rotation_pending_since)

    def rotation_finished(self, namespace: str, broker: str, listener: str, seconds: float, complete: bool, *,
                          per_listener: bool = True) -> None:
        """Count a signalled rotation; ``per_listener`` False (the broker was deleted meanwhile) keeps its
        per-listener series from coming back."""
        self.rotations.labels(result="complete" if complete else "incomplete").inc()
        if complete and per_listener:
            self.rotation_completed(namespace, broker, listener, seconds)
        elif complete:
            self.rotation_seconds.observe(seconds)

    def rotation_completed(self, namespace: str, broker: str, listener: str, seconds: float) -> None:
        """Every pod serves the new certificate, ``seconds`` after the Secret change was seen."""
        self.rotation_seconds.observe(seconds)
        self.last_rotation_seconds.labels(namespace=namespace, broker=broker, listener=listener).set(seconds)

    def observed(self, namespace: str, broker: str, listener: str, *, not_after: datetime.datetime | None = None,
                 not_serving: int | None = None, pending_since: float | None = None) -> None:
        """Record what a check of one listener found (fields left None were not observed)."""
        labels = {"namespace": namespace, "broker": broker, "listener": listener}
        if not_after is not None:
            self.certificate_not_after.labels(**labels).set(not_after.timestamp())
        if not_serving is not None:
            self.pods_not_serving.labels(**labels).set(not_serving)
        if pending_since is not None:
            self.rotation_pending_since.labels(**labels).set(pending_since)

    def forget(self, namespace: str, broker: str, listeners: list[str] | None = None) -> None:
        """Drop the per-listener series of a deleted broker (all of them when ``listeners`` is None or empty:
        the spec may be unknown by then), or of listeners a spec no longer has."""
        for metric in self._per_listener:
            if listeners:
                for listener in listeners:
                    metric.remove(namespace=namespace, broker=broker, listener=listener)
            else:
                metric.remove_matching(namespace=namespace, broker=broker)

    def names(self) -> list[str]:
        return self.registry.names()

    def retain(self, namespace: str, broker: str, listeners: set[str]) -> None:
        """Drop the per-listener series of ``broker``'s listeners that its spec no longer has."""
        for metric in self._per_listener:
            for labels, _ in list(metric.samples()):
                mine = (labels["namespace"], labels["broker"]) == (namespace, broker)
                if mine and labels["listener"] not in listeners:
                    metric.remove(**labels)
