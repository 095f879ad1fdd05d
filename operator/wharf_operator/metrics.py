"""The operator's Prometheus metrics (text format, served by ``cli.py``)."""

from __future__ import annotations

from wharf_broker.metrics import Registry


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = Registry()
        self.reconciles = self.registry.counter(
            "wharf_operator_reconciles_total", "MQTTBroker reconciliations, by result.", ["result"])
        self.errors = self.registry.counter(
            "wharf_operator_errors_total", "Errors in the operator's handlers, by handler.", ["handler"])
        self.rotations = self.registry.counter(
            "wharf_operator_rotations_total",
            "Certificate rotations signalled to brokers, by result (complete, incomplete, refused).", ["result"])
        self.rotation_seconds_sum = self.registry.counter(
            "wharf_operator_rotation_seconds_sum", "Total seconds from a new Secret to every pod serving it.")
        self.rotation_seconds_count = self.registry.counter(
            "wharf_operator_rotation_seconds_count", "Rotations counted in wharf_operator_rotation_seconds_sum.")
        self.drift_repairs = self.registry.counter(
            "wharf_operator_drift_repairs_total",
            "Owned objects created or changed back to what an already reconciled spec says (deleted or edited by "
            "hand), by kind.", ["kind"])
        self.field_conflicts = self.registry.counter(
            "wharf_operator_field_conflicts_total",
            "Server-side applies refused because another field manager changed a field the operator owns, by kind.",
            ["kind"])
        self.last_rotation_seconds = self.registry.gauge(
            "wharf_operator_last_rotation_seconds", "Seconds the last rotation of a listener took.",
            ["namespace", "broker", "listener"])

    def rotation_finished(self, namespace: str, broker: str, listener: str, seconds: float, complete: bool) -> None:
        self.rotations.labels(result="complete" if complete else "incomplete").inc()
        if complete:
            self.rotation_seconds_sum.inc(seconds)
            self.rotation_seconds_count.inc()
            self.last_rotation_seconds.labels(namespace=namespace, broker=broker, listener=listener).set(seconds)

    def forget(self, namespace: str, broker: str, listeners: list[str]) -> None:
        for listener in listeners:
            self.last_rotation_seconds.remove(namespace=namespace, broker=broker, listener=listener)
