"""Status of an MQTTBroker: conditions (Kubernetes conventions) and the per-listener certificate records.

``compose`` computes the whole status from what one pass observed (the StatefulSet, the pods' answers, the
rendered config, the Secrets), so that every reconcile writes it in one patch. Conditions follow kstatus:
``Ready``, and the abnormal-true ``Reconciling`` (work in progress) and ``Stalled`` (no progress without a
change by someone: an invalid config, a refused certificate, a field another manager holds); every condition
carries the ``observedGeneration`` it was computed for.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

READY = "Ready"
CERTIFICATES_READY = "CertificatesReady"
CONFIG_APPLIED = "ConfigApplied"
PAUSED = "Paused"
# Whether the broker pods form one cluster on NATS; only present when spec.cluster is set.
CLUSTERED = "Clustered"
RECONCILING = "Reconciling"
STALLED = "Stalled"

# Why a listener's certificate is not served everywhere (status.listeners[].reason).
REFUSED = "Refused"  # invalid material (or a pod refused it): waits for a new Secret
WAITING_FOR_KUBELET = "WaitingForKubelet"  # the pods' files do not carry the Secret yet: the kubelet is behind
NOT_SERVED = "NotServed"  # a pod could not be asked or did not load it: retried
# A new client-CA bundle (caRef) held back: connected clients would no longer verify against it. Retried by the
# timer (it goes once they reconnected with certificates the bundle trusts), or forced by an annotation.
CLIENT_CA_LOCKOUT = "ClientCAWouldLockOut"


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


@dataclass
class Observed:
    """What one pass saw; ``None`` fields were not looked at this time and keep their current status."""

    generation: int | None
    replicas: int
    selector: str
    ready_replicas: int
    rolling: bool = False  # the StatefulSet controller has not yet moved every pod to the current template
    config: tuple[bool, str, str] | None = None  # ConfigApplied (status, reason, message)
    listener_records: dict[str, dict] | None = None  # listener name -> fields of status.listeners[]
    listener_names: set[str] = field(default_factory=set)  # the spec's TLS listeners
    # None: no spec.cluster (no Clustered condition, no status.cluster); else (status.cluster, ok, reason, message)
    cluster: tuple[dict | None, bool, str, str] | None = None
    conflicts: list[str] = field(default_factory=list)  # fields another manager holds, not taken back yet
    reconciled: bool = False  # a full reconcile of ``generation``: status.observedGeneration moves
    image: str | None = None  # the broker image of the StatefulSet's pod template (None: no StatefulSet yet)


def _certificates(listeners: list[dict]) -> tuple[bool, str, str]:
    problems = [e for e in listeners if e.get("lastError")]
    if not problems:
        return True, "Valid", "every TLS listener has valid material served by every pod"
    reasons = {e.get("reason") or REFUSED for e in problems}
    reason = next(r for r in (REFUSED, CLIENT_CA_LOCKOUT, NOT_SERVED, WAITING_FOR_KUBELET) if r in reasons)
    return False, reason, "; ".join(f"{e['name']}: {e['lastError']}" for e in problems)


def _ready(observed: Observed, config: dict, config_ok: bool, certs: tuple[bool, str, str]) -> tuple[bool, str, str]:
    """The Ready condition: every pod ready (no rolling update under way), the config applied, certificates good."""
    certs_ok, certs_reason, certs_message = certs
    ready, wanted = observed.ready_replicas, observed.replicas
    if ready >= wanted and not observed.rolling and certs_ok and config_ok:
        return True, "AllPodsReady", f"{ready}/{wanted} pods ready"
    if not config_ok:
        return False, config.get("reason") or "ConfigNotApplied", "the config is not applied"
    if not certs_ok:
        return False, WAITING_FOR_KUBELET if certs_reason == WAITING_FOR_KUBELET else "CertificatesNotReady", \
            certs_message
    if observed.rolling:
        return False, "RollingUpdate", f"pods are being replaced one at a time; {ready}/{wanted} ready"
    return False, "WaitingForPods", f"{ready}/{wanted} pods ready"


def _stalled(observed: Observed, config: dict, certs: tuple[bool, str, str]) -> tuple[str, str] | None:
    """Why the operator cannot make progress without a change by someone else, or None."""
    certs_ok, certs_reason, certs_message = certs
    if config.get("reason") == "InvalidConfig":
        return "InvalidConfig", config.get("message", "")
    if not certs_ok and certs_reason == REFUSED:
        return "CertificateRefused", certs_message
    if observed.conflicts:
        return "FieldConflict", "fields changed by another manager, taken back later: " + "; ".join(observed.conflicts)
    return None


def _progress(observed: Observed, observed_generation: Any, config: dict, config_ok: bool,
              certs: tuple[bool, str, str], cluster_ok: bool, conditions: list[dict]) -> tuple[str, str] | None:
    """What the operator is still waiting for (the Reconciling condition), or None when it is done."""
    certs_ok, certs_reason, certs_message = certs
    if observed_generation != observed.generation:
        return "NewGeneration", f"generation {observed.generation} is not reconciled yet"
    if observed.rolling:
        return "RollingUpdate", "pods are being replaced one at a time"
    if not config_ok:
        return config.get("reason") or "ConfigNotApplied", config.get("message", "")
    if not certs_ok:
        return certs_reason, certs_message
    if observed.ready_replicas < observed.replicas:
        return "WaitingForPods", f"{observed.ready_replicas}/{observed.replicas} pods ready"
    if not cluster_ok:
        return "ClusterForming", (get_condition(conditions, CLUSTERED) or {}).get("message", "")
    return None


def compose(current: dict, observed: Observed) -> dict:
    """The status fields to write (a merge patch of status), from the current status and what was observed."""
    generation = observed.generation
    conditions = current.get("conditions")
    result: dict[str, Any] = {"replicas": observed.replicas, "selector": observed.selector,
                              "readyReplicas": observed.ready_replicas}
    if observed.image is not None:
        result["image"] = observed.image
    if observed.reconciled:
        result["observedGeneration"] = generation
    observed_generation = result.get("observedGeneration", current.get("observedGeneration"))

    if observed.config is not None:
        ok, reason, message = observed.config
        conditions = set_condition(conditions, CONFIG_APPLIED, ok, reason, message, generation)
    config = get_condition(conditions, CONFIG_APPLIED) or {}

    listeners = [e for e in current.get("listeners") or [] if e.get("name") in observed.listener_names]
    for listener_name, fields in (observed.listener_records or {}).items():
        listeners = merge_listener(listeners, listener_name, **fields)
    result["listeners"] = listeners
    result["earliestCertificateExpiry"] = earliest_expiry(listeners)
    certs_ok, certs_reason, certs_message = _certificates(listeners)
    if listeners or get_condition(conditions, CERTIFICATES_READY) or observed.listener_names:
        conditions = set_condition(conditions, CERTIFICATES_READY, certs_ok, certs_reason, certs_message, generation)

    if observed.cluster is None:
        result["cluster"] = None
        conditions = [c for c in conditions or [] if c.get("type") != CLUSTERED]
        cluster_ok = True
    else:
        cluster, cluster_ok, reason, message = observed.cluster
        result["cluster"] = cluster
        conditions = set_condition(conditions, CLUSTERED, cluster_ok, reason, message, generation)

    config_ok = config.get("status") == "True"
    certs = (certs_ok, certs_reason, certs_message)
    is_ready, reason, message = _ready(observed, config, config_ok, certs)
    conditions = set_condition(conditions, READY, is_ready, reason, message, generation)
    stalled = _stalled(observed, config, certs)
    conditions = set_condition(conditions, STALLED, stalled is not None, *(stalled or ("NotStalled", "")),
                               generation)
    progress = None if stalled is not None else _progress(observed, observed_generation, config, config_ok, certs,
                                                          cluster_ok, conditions)
    conditions = set_condition(conditions, RECONCILING, progress is not None,
                               *(progress or ("Reconciled", "the observed state is the desired state")), generation)
    result["conditions"] = conditions
    return result
