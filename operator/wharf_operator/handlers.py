"""kopf wiring: which events call which ``Controller`` method.

- MQTTBroker resume/create/update (spec, labels, annotations — so the pause annotation counts) → reconcile.
- An index maps each referenced Secret/ConfigMap to the MQTTBrokers that load it; event handlers on Secrets
  and ConfigMaps (silent: no state written onto objects the operator does not own) look a changed object up
  in it and hand it to the controller. A filter (``when=``) keeps the handlers from running at all for a Secret
  or ConfigMap that no MQTTBroker references or owns (counted in ``wharf_operator_watch_events_total``), and
  the API server leaves Helm's release Secrets out of the watch (``SECRET_FIELD_SELECTOR``). What remains: the
  watch still lists and streams every other Secret and ConfigMap in scope, which kopf parses and copies
  (docs/operator-rbac.md).
- Every event of an object an MQTTBroker owns (StatefulSet, Services, ConfigMap, PodDisruptionBudget,
  ServiceAccount, NetworkPolicy, the admin-token Secret; deletions included) requests a reconcile of its owner: a
  deleted or hand-edited object is repaired, and status follows the pods (``Controller.request_reconcile``).
- Every MQTTBroker is reconciled every ``resync_interval`` with nothing changed (drift no event showed), and what
  every pod serves is re-checked every ``recheck_interval``; on resume (an operator start or a new leader) it is
  re-checked at once, so a rotation an earlier operator left half done is finished.
- No finalizer: an MQTTBroker (or its namespace) is deleted whether the operator runs or not. kopf puts one on
  an object only for timers, daemons or non-optional delete handlers, so the periodic work runs in two loops of
  the controller's own over the MQTTBrokers it has seen, not as kopf timers; a finalizer an older operator left
  is removed by kopf on the first event (it removes one no handler needs). The in-memory state is forgotten on
  the DELETED event, or by the loops when the object is gone; owned objects go with their ownerReferences.

``build_registry`` builds a fresh registry, so every test (and the CLI) gets its own handlers and settings.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import kopf

from .controller import Controller, referenced_objects
from .crd import GROUP, PLURAL, VERSION

INDEX = "wharf_references"
# Server-side filter of the operator's Secret watch (and its initial listing). Helm keeps every revision of every
# release in a Secret of this type (the rendered chart, gzipped, up to about 1 MiB each); none can hold what a
# broker loads, so the API server never sends them. (Secrets support the field selector ``type``; ConfigMaps
# have no field to tell referenced ones from others, and what users reference carries no label of ours.)
SECRET_FIELD_SELECTOR = "type!=helm.sh/release.v1"


def owner_broker(meta: dict) -> str | None:
    """The name of the MQTTBroker that is the object's controller, if one is."""
    owner = next((ref for ref in meta.get("ownerReferences") or []
                  if ref.get("kind") == "MQTTBroker" and ref.get("controller")
                  and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/")), None)
    return owner["name"] if owner else None


def concerns_a_broker(kind: str, event: dict, index: kopf.Index) -> bool:
    """Whether a Secret/ConfigMap event is one the operator acts on: a change (not the initial listing) of an
    object some MQTTBroker references or owns. Reads the event's metadata only, never the object's data."""
    meta = (event.get("object") or {}).get("metadata") or {}
    if event.get("type") is None or not meta.get("namespace"):
        return False
    return owner_broker(meta) is not None or (kind, meta["namespace"], meta.get("name")) in index


def configure_settings(settings: kopf.OperatorSettings) -> None:
    """kopf's settings for this operator (set by its startup handler)."""
    # Events are posted for every rotation and refusal; keep kopf's own handler chatter out of them.
    settings.posting.level = 30  # WARNING and above from kopf's logs; our events are posted explicitly
    # No cluster-wide scanning of CRDs and namespaces: the CRD is installed before the operator, and the
    # namespaces are given on the command line. This keeps the RBAC to what docs/operator-rbac.md lists.
    settings.scanning.disabled = True
    settings.watching.field_selectors["v1", "secrets"] = SECRET_FIELD_SELECTOR
    # kopf's own bookkeeping gets its own prefix: kopf leaves every annotation under it out of the diff,
    # and the pause annotation (mqtt.wharf.dev/...) must count as a change.
    settings.persistence.finalizer = f"operator.{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=f"operator.{GROUP}")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=f"operator.{GROUP}", key="last-handled-configuration")


def build_registry(controller: Controller, connection: kopf.ConnectionInfo | None = None) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    if connection is not None:
        @kopf.on.login(registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            return connection

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_settings(settings)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await controller.close()

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    async def resume(body: kopf.Body, **_: Any) -> None:
        """Found at start: reconcile, then ask every pod what it serves (a rotation may be half done)."""
        await reconcile(body)
        try:
            await controller.recheck(_plain(body))
        except Exception:
            controller.metrics.errors.labels(handler="recheck").inc()
            raise

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    async def reconcile(body: kopf.Body, **_: Any) -> None:
        try:
            await controller.reconcile(_plain(body))
        except Exception:
            controller.metrics.errors.labels(handler="reconcile").inc()
            controller.metrics.reconciles.labels(result="error").inc()
            raise

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry, id="seen")
    async def seen(event: dict, **_: Any) -> None:
        """Every MQTTBroker the watch shows is one the periodic loops visit; a deleted one is forgotten. (An event
        handler needs no finalizer, unlike kopf's delete handlers.)"""
        meta = (event.get("object") or {}).get("metadata") or {}
        if not meta.get("namespace") or not meta.get("name"):
            return
        if event.get("type") == "DELETED":
            controller.forget(meta["namespace"], meta["name"])
        else:
            controller.track(meta["namespace"], meta["name"])
            # Started from a handler, not at startup: the loops post events, which needs the handlers' context.
            controller.start_periodic()

    @kopf.index(GROUP, VERSION, PLURAL, registry=registry, id=INDEX)
    def references(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict:
        return {(kind, namespace, obj_name): name for kind, obj_name in referenced_objects(dict(spec))}

    def owned_changed(kind: str, event: dict) -> None:
        """An event of an object whose controller is an MQTTBroker (the initial listing aside): reconcile it."""
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        owner = owner_broker(meta)
        if owner is None or event.get("type") is None or not meta.get("namespace"):
            return
        controller.request_reconcile(meta["namespace"], owner,
                                     f"{kind} {meta.get('name')} {str(event.get('type')).lower()}")

    async def referenced_changed(kind: str, event: dict, index: kopf.Index) -> None:
        obj = event.get("object") or {}
        meta = obj.get("metadata") or {}
        owned_changed(kind, event)
        brokers = list(index.get((kind, meta.get("namespace"), meta.get("name")), []))
        # type None is the initial listing: reconciliation (resume) and the timer cover what exists already.
        if not brokers or event.get("type") is None:
            return
        try:
            await controller.on_referenced_change(kind, meta["namespace"], meta["name"], brokers)
        except Exception:
            controller.metrics.errors.labels(handler=f"{kind.lower()}-event").inc()
            raise

    def relevant(kind: str) -> Callable[..., bool]:
        def check(event: dict, wharf_references: kopf.Index, **_: Any) -> bool:
            acted = concerns_a_broker(kind, event, wharf_references)
            if event.get("type") is not None:
                controller.metrics.watch_events.labels(kind=kind, relevant=str(acted).lower()).inc()
            return acted
        return check

    @kopf.on.event("v1", "secrets", registry=registry, when=relevant("Secret"))
    async def secret_event(event: dict, wharf_references: kopf.Index, **_: Any) -> None:
        await referenced_changed("Secret", event, wharf_references)

    @kopf.on.event("v1", "configmaps", registry=registry, when=relevant("ConfigMap"))
    async def configmap_event(event: dict, wharf_references: kopf.Index, **_: Any) -> None:
        await referenced_changed("ConfigMap", event, wharf_references)

    # Owned objects of the other kinds, found by their controller reference (labels can be edited away).
    for group_version, plural, kind in (("apps/v1", "statefulsets", "StatefulSet"), ("v1", "services", "Service"),
                                        ("v1", "serviceaccounts", "ServiceAccount"),
                                        ("policy/v1", "poddisruptionbudgets", "PodDisruptionBudget"),
                                        ("networking.k8s.io/v1", "networkpolicies", "NetworkPolicy")):
        async def owned_event(event: dict, kind: str = kind, **_: Any) -> None:
            owned_changed(kind, event)

        kopf.on.event(*group_version.split("/"), plural, registry=registry, id=f"owned-{plural}")(owned_event)

    return registry


def _plain(body: kopf.Body) -> dict:
    """A plain copy of kopf's live body view (the controller keeps it across awaits)."""
    return copy.deepcopy(dict(body))
