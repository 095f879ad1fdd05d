"""Status of an MQTTBroker: conditions (Kubernetes conventions) and the per-listener certificate records."""

from __future__ import annotations

import datetime
from typing import Any

READY = "Ready"
CERTIFICATES_READY = "CertificatesReady"
CONFIG_APPLIED = "ConfigApplied"
PAUSED = "Paused"
# Whether the broker pods form one cluster on NATS (False with IndependentBrokers: replicas > 1, no spec.cluster).
CLUSTERED = "Clustered"


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(conditions: list[dict] | None, type_: str, status: bool | str, reason: str, message: str,
                  generation: int | None = None) -> list[dict]:
    """A new list with one condition set; lastTransitionTime only moves when the status changes."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    result = [dict(c) for c in (conditions or []) if c.get("type") != type_]
    previous = next((c for c in conditions or [] if c.get("type") == type_), None)
    condition: dict[str, Any] = {"type": type_, "status": value, "reason": reason, "message": message,
                                 "lastTransitionTime": (previous or {}).get("lastTransitionTime") or now_iso()}
    if previous is None or previous.get("status") != value:
        condition["lastTransitionTime"] = now_iso()
    if generation is not None:
        condition["observedGeneration"] = generation
    result.append(condition)
    return sorted(result, key=lambda c: c["type"])


def get_condition(conditions: list[dict] | None, type_: str) -> dict | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def merge_listener(listeners: list[dict] | None, name: str, **fields: Any) -> list[dict]:
    """A new status.listeners list with one entry updated (``None`` removes a field)."""
    result = [dict(entry) for entry in listeners or []]
    entry = next((e for e in result if e.get("name") == name), None)
    if entry is None:
        entry = {"name": name}
        result.append(entry)
    for key, value in fields.items():
        if value is None:
            entry.pop(key, None)
        else:
            entry[key] = value
    return sorted(result, key=lambda e: e["name"])


def earliest_expiry(listeners: list[dict]) -> str | None:
    dates = [e["notAfter"] for e in listeners if e.get("notAfter")]
    return min(dates) if dates else None


def iso(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
