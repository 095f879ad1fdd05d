"""What the operator does for one MQTTBroker: reconcile owned objects, validate certificates, signal pods.

``handlers.py`` wires these methods to kopf; this module knows nothing about how it is triggered. A per-broker
lock serialises the Secret handler, the timers and reconciliation, so two rotations of one broker never overlap.

Reconciliation is level-triggered: whatever started it (the spec, an event of an owned object, the periodic
resync), it builds every desired object (``builders.py``), applies them in one place with server-side apply, and
writes the status computed from what it observed in one patch (``status.compose``).
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import builders, certs, nats, render, resources
from . import status as st
from .crd import FORCE_CLIENT_CA_ANNOTATION, GROUP, PAUSE_ANNOTATION, PLURAL, VERSION, defaulted_spec
from .kube import CONFIGMAPS, PODS, SECRETS, STATEFULSETS, ApiError, KubeApi, Resource
from .metrics import OperatorMetrics
from .signalling import BrokerAdmin, PodTarget, SignalError

MQTTBROKERS = Resource(GROUP, VERSION, PLURAL)
# On every owned object: the digest of what the operator last applied (an apply that changes nothing is skipped).
APPLIED_ANNOTATION = f"{GROUP}/applied"
# MQTTBrokers the periodic resync or recheck visit at once.
PERIODIC_CONCURRENCY = 8
log = logging.getLogger("wharf_operator")


@dataclass
class OperatorConfig:
    # How often the timer re-checks what every pod serves.
    recheck_interval: float = 60.0
    # How long a pod may wait for the kubelet to project a new Secret before it answers 409 (kubelet sync is
    # about a minute plus its cache delay).
    reload_wait: float = 90.0
    # How often every MQTTBroker is reconciled with nothing changed (drift an event did not show is repaired).
    resync_interval: float = 60.0
    # A field another manager changed again within this many seconds after the operator took it back is reported
    # (FieldConflict) and left until then, not fought on every event.
    conflict_backoff: float = 30.0
    # Events of owned objects within this many seconds share one reconcile.
    event_delay: float = 0.2
    # The image of brokers without spec.image (--broker-image; the chart passes its own image).
    broker_image: str = resources.DEFAULT_BROKER_IMAGE
    # The NetworkPolicies of an MQTTBroker that leaves spec.networkPolicy.enabled unset (--network-policy).
    network_policy: bool = True
    # Where the operator's own pods run and their labels: the only peer the NetworkPolicy lets reach the admin API.
    operator_namespace: str | None = None
    operator_pod_labels: dict[str, str] = field(default_factory=dict)


@dataclass
class ListenerRef:
    listener_id: str  # "ssl:<name>", as the broker's admin API names it
    name: str
    spec: dict


def tls_listeners(spec: dict) -> list[ListenerRef]:
    return [ListenerRef(f"{l['type']}:{l['name']}", l["name"], l) for l in spec.get("listeners", [])
            if l.get("tls")]


def referenced_objects(spec: dict) -> set[tuple[str, str]]:
    """``{(kind, name)}`` of the Secrets and ConfigMaps whose content the brokers load."""
    refs: set[tuple[str, str]] = set()
    for listener in tls_listeners(defaulted_spec(spec)):
        tls = listener.spec["tls"]
        refs.add(("Secret", tls["secretName"]))
        for bundle in ("caRef", "trustedIssuerCARef"):
            if bundle in tls:
                refs.add((tls[bundle].get("kind", "Secret"), tls[bundle]["name"]))
        if "keyPasswordSecretRef" in tls:
            refs.add(("Secret", tls["keyPasswordSecretRef"]["name"]))
    return refs


def is_paused(body: dict) -> bool:
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(PAUSE_ANNOTATION, "")).lower() == "true"


@dataclass
class _BrokerState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # listener id -> material (leaf fingerprint and CA bundle digest) every pod was last told to load
    signalled: dict[str, str] = field(default_factory=dict)
    # listener id -> the refusal last reported, so a Secret that stays invalid is not reported on every event
    refused: dict[str, str] = field(default_factory=dict)
    # TLS options some running pod has not accepted yet; the timer pushes them again
    live_pending: dict[str, dict] | None = None
    # "Kind/name" -> when the operator last took fields back from another manager (force), and the fields
    # another manager holds now that it has not taken back yet
    forced: dict[str, float] = field(default_factory=dict)
    conflicts: dict[str, list[str]] = field(default_factory=dict)
    warned_generation: int | None = None  # the generation the IndependentBrokers warning was posted for
    # listener id -> a rotation not every pod serves yet: (material signature, when the first Secret change not
    # served was seen (epoch seconds), when the latest was seen (monotonic)); rotation latency counts from the latter
    pending: dict[str, tuple[str, float, float]] = field(default_factory=dict)
    # listener id -> SHA-256 of the client-CA bundle (caRef) every pod was last told to load (checked or forced)
    client_ca: dict[str, str] = field(default_factory=dict)
    # listener id -> SHA-256 of a client-CA bundle held back (connected clients would be locked out); the timer
    # checks it again
    client_ca_held: dict[str, str] = field(default_factory=dict)
    # listener id -> the ClientCAWouldLockOut finding last posted as an Event (one Event per finding)
    client_ca_warned: dict[str, str] = field(default_factory=dict)


class Controller:
    def __init__(self, api: KubeApi, admin: BrokerAdmin, config: OperatorConfig | None = None,
                 metrics: OperatorMetrics | None = None) -> None:
        self.api = api
        self.admin = admin
        self.config = config or OperatorConfig()
        self.metrics = metrics or OperatorMetrics()
        self._brokers: dict[tuple[str, str], _BrokerState] = {}
        self._queued: set[tuple[str, str]] = set()  # brokers with a reconcile requested by an event, not started
        self._tasks: set[asyncio.Task] = set()
        self._known: set[tuple[str, str]] = set()  # MQTTBrokers the watch has shown (the periodic loops visit them)
        self._deleted: set[tuple[str, str]] = set()  # MQTTBrokers the watch showed deleted (until shown again)
        self._periodic_started = False

    def _current(self, state: _BrokerState, namespace: str, name: str) -> bool:
        """Whether ``state`` is still the broker's (not forgotten since: a deletion while a pass ran)."""
        return self._brokers.get((namespace, name)) is state

    def _observed(self, state: _BrokerState, namespace: str, name: str, listener: str, **values: Any) -> None:
        """Per-listener gauges, unless the broker was deleted meanwhile (its series must not come back)."""
        if self._current(state, namespace, name):
            self.metrics.observed(namespace, name, listener, **values)

    def _state(self, namespace: str, name: str) -> _BrokerState:
        """The broker's state; for a deleted broker (a pass that read it just before the deletion, an owned
        object's event during garbage collection) a detached one, so nothing of it is kept or published."""
        if (namespace, name) in self._deleted:
            return _BrokerState()
        return self._brokers.setdefault((namespace, name), _BrokerState())

    # --- owned objects -----------------------------------------------------------------------------------

    async def _apply(self, desired: builders.Desired, broker: dict, state: _BrokerState) -> str:
        """Make one owned object what the builders say, by server-side apply as field manager "wharf-operator";
        "created", "updated", "unchanged" or "conflict" (another manager holds a field, taken back later).

        The applied body is all the operator owns of the object, so a field left out of the spec disappears from
        the live object. An apply that would change nothing is skipped: the object carries the digest of what was
        last applied, and the live object still holds every desired value.
        """
        resource, body = desired.resource, copy.deepcopy(desired.body)
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        live = await self.api.get(resource, namespace, name)
        if live is None and desired.create_only:
            await self.api.create(resource, namespace, body)
            return "created"
        if desired.create_only:
            return "unchanged"
        if live is not None and desired.kind == "StatefulSet" and name != broker["metadata"]["name"]:
            # A deployed NATS: volumeClaimTemplates cannot change on a live StatefulSet, so a new size applies to
            # new volumes only if the StatefulSet is recreated (documented); apply what it has.
            claims = [{k: v for k, v in t.items() if k != "status"}
                      for t in (live.get("spec") or {}).get("volumeClaimTemplates") or []]
            body["spec"].pop("volumeClaimTemplates", None)
            if claims:
                body["spec"]["volumeClaimTemplates"] = claims
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        meta.setdefault("annotations", {})[APPLIED_ANNOTATION] = digest
        if live is not None:
            live_annotations = (live.get("metadata") or {}).get("annotations") or {}
            if live_annotations.get(APPLIED_ANNOTATION) == digest and resources.is_subset(
                    {k: v for k, v in body.items() if k != "metadata"}, live) and resources.is_subset(
                    {k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta},
                    live.get("metadata") or {}):
                return "unchanged"
        key = f"{desired.kind}/{name}"
        try:
            # Creating: nobody else owns a field yet. Otherwise no force: a field someone else changed is a conflict.
            applied = await self.api.apply(resource, namespace, name, body, force=live is None)
        except ApiError as exc:
            if exc.status != 409:
                raise
            conflicts = exc.conflicts() or [exc.body[:300]]
            self.metrics.field_conflicts.labels(kind=desired.kind).inc()
            held_since = state.forced.get(key)
            now = time.monotonic()
            if held_since is not None and now - held_since < self.config.conflict_backoff:
                # Taken back a short while ago and changed again: someone keeps editing it. Report it, do not
                # fight every event; the resync after the backoff takes the fields back.
                if state.conflicts.get(key) != conflicts:
                    kopf.warn(broker, reason="FieldConflict",
                              message=f"{key}: {'; '.join(conflicts)}; the operator takes these fields back "
                                      f"after {self.config.conflict_backoff:.0f}s")
                    asyncio.get_running_loop().call_later(
                        self.config.conflict_backoff - (now - held_since) + 0.1, self.request_reconcile,
                        namespace, broker["metadata"]["name"], f"{key} conflict backoff over")
                state.conflicts[key] = conflicts
                return "conflict"
            kopf.warn(broker, reason="FieldConflict",
                      message=f"{key}: {'; '.join(conflicts)}; the operator owns these fields and takes them back")
            state.forced[key] = now
            state.conflicts.pop(key, None)
            applied = await self.api.apply(resource, namespace, name, body, force=True)
        state.conflicts.pop(key, None)
        if live is None:
            return "created"
        before = (live.get("metadata") or {}).get("resourceVersion")
        return "updated" if (applied or {}).get("metadata", {}).get("resourceVersion") != before else "unchanged"

    async def _apply_all(self, inputs: builders.Inputs, broker: dict, state: _BrokerState) -> dict[str, str]:
        """Apply every object the builders return, delete what the spec no longer wants (only if ours)."""
        results: dict[str, str] = {}
        for desired in builders.desired_objects(inputs):
            results[f"{desired.kind}/{desired.name}"] = await self._apply(desired, broker, state)
        for resource, obj_name in builders.unwanted(inputs):
            existing = await self.api.get(resource, inputs.namespace, obj_name)
            owners = ((existing or {}).get("metadata") or {}).get("ownerReferences") or []
            # Only what this MQTTBroker owns: a same-named object of someone else's is left alone.
            if existing is not None and any(ref.get("uid") == inputs.uid for ref in owners):
                await self.api.delete(resource, inputs.namespace, obj_name)
                results[f"{existing.get('kind', resource.plural)}/{obj_name}"] = "deleted"
        return results

    async def reconcile(self, body: dict, trigger: str = "spec") -> None:
        """Level-triggered: make every owned object what the spec says, whatever changed (the spec, an owned
        object, or nothing: the periodic resync), and write the status from what was observed, in one patch."""
        started = time.monotonic()
        try:
            await self._reconcile(body, trigger)
        finally:
            self.metrics.reconcile_seconds.observe(time.monotonic() - started)

    async def _reconcile(self, body: dict, trigger: str) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        generation = meta.get("generation")
        state = self._state(namespace, name)
        async with state.lock:
            if is_paused(body):
                await self._patch_status(namespace, name, lambda s: {
                    "conditions": st.set_condition(s.get("conditions"), st.PAUSED, True, "PauseAnnotation",
                                                   f"{PAUSE_ANNOTATION} is true: not reconciling", generation)})
                self.metrics.reconciles.labels(result="paused").inc()
                return
            spec = defaulted_spec(body.get("spec") or {})
            try:
                tree = render.config_tree(spec, broker=name, namespace=namespace)
                hocon = render.to_hocon(tree)
                _check_loads(hocon)
            except render.RenderError as exc:
                kopf.warn(body, reason="InvalidConfig", message=str(exc))
                await self._write_status(body, spec, config=(False, "InvalidConfig", str(exc)), reconciled=True)
                self.metrics.reconciles.labels(result="invalid").inc()
                return
            live_options = render.live_ssl_options(tree)
            live_hash = hashlib.sha256(json.dumps(live_options, sort_keys=True).encode()).hexdigest()[:16]
            previous_cm = await self.api.get(CONFIGMAPS, namespace, resources.config_map_name(name))
            previous_live = ((previous_cm or {}).get("metadata", {}).get("annotations") or {}).get(
                resources.LIVE_OPTIONS_ANNOTATION)
            restart = render.restart_hash(tree)
            previous_sts = await self.api.get(STATEFULSETS, namespace, name)
            inputs = builders.Inputs(name, namespace, meta.get("uid"), spec, hocon, live_hash, restart,
                                     self.config.broker_image, self.config.network_policy,
                                     resources.operator_peer(self.config.operator_namespace,
                                                             self.config.operator_pod_labels))
            results = await self._apply_all(inputs, body, state)
            changed = [key for key, result in results.items() if result in ("created", "updated", "deleted")]
            # The generation was reconciled before and the spec asks for the same objects: what changed was drift.
            current = await self.api.get(MQTTBROKERS, namespace, name)
            if ((current or {}).get("status") or {}).get("observedGeneration") == generation:
                for key in changed:
                    self.metrics.drift_repairs.labels(kind=key.split("/", 1)[0]).inc()
                if changed:
                    kopf.event(body, type="Normal", reason="DriftRepaired",
                               message=f"made {', '.join(changed)} what the spec says again ({trigger})")
            log.info("MQTTBroker %s/%s reconciled (%s); changed: %s", namespace, name, trigger,
                     ", ".join(changed) or "nothing")

            # ssl_options that changed while the pods stay: push them to the running brokers.
            previous_restart = ((previous_sts or {}).get("spec", {}).get("template", {}).get("metadata", {})
                                .get("annotations") or {}).get(resources.CONFIG_HASH_ANNOTATION)
            config_message = "config rendered and applied"
            if previous_live and previous_live != live_hash and previous_restart == restart:
                errors = await self._push_live_options(namespace, name, live_options)
                state.live_pending = live_options if errors else None
                if errors:
                    config_message = "some pods refused the new TLS options: " + "; ".join(errors)
                else:
                    config_message = "TLS options applied live to the running pods"
                    kopf.event(body, type="Normal", reason="ConfigAppliedLive", message=config_message)
            elif previous_restart and previous_restart != restart:
                state.live_pending = None  # new pods start with the new config
                kopf.event(body, type="Normal", reason="RollingUpdate",
                           message="config change needs new pods; rolling them one at a time")
            elif state.live_pending is not None:
                config_message = "some pods refused the new TLS options; retrying"
            image, previous_image = resources.broker_image(spec, self.config.broker_image), _image(previous_sts)
            if previous_image and previous_image != image:
                kopf.event(body, type="Normal", reason="RollingUpdate",
                           message=f"broker image {previous_image} -> {image}"
                                   f"{'' if spec.get('image') else ' (the operator default)'}; "
                                   "rolling the pods one at a time")
            applied_ok = not config_message.startswith("some pods")
            if spec["replicas"] > 1 and not spec.get("cluster") and state.warned_generation != generation:
                # Once per generation: reconciles now run on every owned object's event and every resync.
                state.warned_generation = generation
                kopf.warn(body, reason="IndependentBrokers",
                          message=f"{spec['replicas']} replicas without spec.cluster run as independent brokers")
            records = await self._check_certificates(body, spec, signal=False)
            records.update(await self._ask_held_again(body, spec, state))
            self.metrics.retain(namespace, name, {listener.name for listener in tls_listeners(spec)})
            await self._write_status(body, spec, config=(applied_ok, "Applied" if applied_ok else "LiveUpdateRefused",
                                                         config_message),
                                     records=records, reconciled=True, paused=False)
            self.metrics.reconciles.labels(result="success").inc()

    def request_reconcile(self, namespace: str, name: str, trigger: str) -> None:
        """An owned object changed or went away: reconcile the broker soon. Events of one burst (an apply's echoes,
        a rolling update's status changes) share one reconcile; one that arrives while a reconcile runs gets its
        own after it, so no change is missed."""
        key = (namespace, name)
        if key in self._queued:
            return
        self._queued.add(key)
        task = asyncio.get_running_loop().create_task(self._deferred_reconcile(namespace, name, trigger))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deferred_reconcile(self, namespace: str, name: str, trigger: str) -> None:
        try:
            await asyncio.sleep(self.config.event_delay)
            self._queued.discard((namespace, name))
            body = await self.api.get(MQTTBROKERS, namespace, name)
            if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
                return
            await self.reconcile(body, trigger)
        except asyncio.CancelledError:
            raise
        except Exception:
            self.metrics.errors.labels(handler="owned-object-event").inc()
            self.metrics.reconciles.labels(result="error").inc()
            log.exception("reconciling MQTTBroker %s/%s after %s failed", namespace, name, trigger)
        finally:
            self._queued.discard((namespace, name))

    async def _cluster_status(self, namespace: str, name: str, spec: dict) -> tuple[dict, bool, str, str]:
        """status.cluster and the Clustered condition (status, reason, message), from the NATS StatefulSet's
        readiness and what every running broker pod's /healthz says about its cluster."""
        nats_spec = spec["cluster"]["nats"]
        cluster: dict[str, Any] = {}
        if nats_spec.get("deploy"):
            sts = await self.api.get(STATEFULSETS, namespace, nats.name(name))
            ready = int(((sts or {}).get("status") or {}).get("readyReplicas") or 0)
            cluster["natsReadyReplicas"] = ready
        pods, token = await self._pods_and_token(namespace, name)
        members: set[str] = set()
        connected, errors = 0, []
        for pod in pods:
            try:
                reported = await self.admin.cluster_status(pod, token)
            except SignalError as exc:
                errors.append(str(exc))
                continue
            if reported is None:
                errors.append(f"{pod.name}: runs without a cluster")
                continue
            if (reported.get("backplane") or {}).get("connected"):
                connected += 1
            members.update(str(m) for m in reported.get("members") or [])
        if nats_spec.get("deploy"):
            nats_ready = cluster["natsReadyReplicas"] >= nats.SERVERS
        else:
            nats_ready = bool(pods) and connected == len(pods)
        cluster.update(natsReady=nats_ready, members=sorted(members), podsConnected=connected,
                       lastError="; ".join(errors) or None)
        if not nats_ready:
            return cluster, False, "NatsNotReady", (
                f"{cluster.get('natsReadyReplicas', 0)}/{nats.SERVERS} NATS pods ready" if nats_spec.get("deploy")
                else f"{connected}/{len(pods)} broker pods connected to NATS")
        if connected < spec["replicas"]:
            return cluster, False, "Forming", f"{connected}/{spec['replicas']} broker pods connected to NATS"
        return cluster, True, "Joined", f"{len(members)} members: {', '.join(sorted(members))}"

    async def _push_live_options(self, namespace: str, name: str, live_options: dict[str, dict]) -> list[str]:
        pods, token = await self._pods_and_token(namespace, name)
        errors: list[str] = []
        for pod in pods:
            for listener_id, options in live_options.items():
                try:
                    await self.admin.update_ssl_options(pod, token, listener_id, options)
                except SignalError as exc:
                    errors.append(str(exc))
        return errors

    # --- status ----------------------------------------------------------------------------------------

    async def _patch_status(self, namespace: str, name: str, build) -> None:
        """Read the current status, build the changed fields from it, write them to the status subresource."""
        current = await self.api.get(MQTTBROKERS, namespace, name)
        if current is None:
            return
        before = current.get("status") or {}
        changes = build(before)
        await self.api.patch(MQTTBROKERS, namespace, name, {"status": changes}, subresource="status")
        if "conditions" in changes:
            _post_condition_changes(current, before.get("conditions") or [], changes["conditions"] or [])

    async def _write_status(self, body: dict, spec: dict, *, config: tuple[bool, str, str] | None = None,
                            records: dict[str, dict] | None = None, reconciled: bool = False,
                            paused: bool | None = None) -> None:
        """Observe the StatefulSet (and the cluster), then write the whole status in one patch."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        sts = await self.api.get(STATEFULSETS, namespace, name)
        cluster = await self._cluster_status(namespace, name, spec) if spec.get("cluster") else None
        observed = st.Observed(
            generation=meta.get("generation"), replicas=spec["replicas"], selector=resources.selector_string(name),
            ready_replicas=int(((sts or {}).get("status") or {}).get("readyReplicas") or 0), image=_image(sts),
            rolling=_rolling(sts), config=config, listener_records=records,
            listener_names={listener.name for listener in tls_listeners(spec)}, cluster=cluster,
            conflicts=[f"{key}: {'; '.join(fields)}" for key, fields in self._state(namespace, name).conflicts.items()],
            reconciled=reconciled)

        def build(current: dict) -> dict:
            status = st.compose(current, observed)
            if paused is not None:
                status["conditions"] = st.set_condition(status["conditions"], st.PAUSED, paused, "Reconciling",
                                                        "reconciliation runs", meta.get("generation"))
            return status

        await self._patch_status(namespace, name, build)

    # --- certificates -------------------------------------------------------------------------------------

    async def _read(self, kind: str, namespace: str, name: str, key: str) -> bytes | None:
        if kind == "ConfigMap":
            obj = await self.api.get(CONFIGMAPS, namespace, name)
            return certs.configmap_bytes(obj, key) if obj else None
        obj = await self.api.get(SECRETS, namespace, name)
        return certs.secret_bytes(obj, key) if obj else None

    async def load_material(self, namespace: str, listener: ListenerRef) -> certs.Material:
        tls = listener.spec["tls"]
        secret = await self.api.get(SECRETS, namespace, tls["secretName"])
        if secret is None:
            raise certs.InvalidMaterial(certs.MISSING, f"Secret {tls['secretName']} not found")
        # The server chain must lead to the pinned issuer CAs (tls.trustedIssuerCARef) when set, else to its issuer
        # as cert-manager records it (the Secret's ca.crt, which a wrong issuer writes too), or to the listener's
        # CA bundle: the anchors the brokers check against (server_cacertfile, cacertfile; render.ssl_options).
        bundles: dict[str, bytes | None] = {"trustedIssuerCARef": None, "caRef": None}
        for ref_field in bundles:
            if ref_field not in tls:
                continue
            ref = tls[ref_field]
            bundle = await self._read(ref.get("kind", "Secret"), namespace, ref["name"], ref.get("key", "ca.crt"))
            if not bundle or not bundle.strip():
                raise certs.InvalidMaterial(certs.MISSING, f"CA bundle {ref.get('kind', 'Secret')} {ref['name']} "
                                                           f"key {ref.get('key', 'ca.crt')} not found ({ref_field})")
            bundles[ref_field] = bundle
        ca_pem = certs.trust_anchors(certs.secret_bytes(secret, "ca.crt"), bundles["trustedIssuerCARef"],
                                     bundles["caRef"])
        password = None
        if "keyPasswordSecretRef" in tls:
            ref = tls["keyPasswordSecretRef"]
            password = await self._read("Secret", namespace, ref["name"], ref.get("key", "password"))
            if password is None:
                raise certs.InvalidMaterial(certs.MISSING, f"key password Secret {ref['name']} not found")
            password = password.rstrip(b"\r\n")
        return certs.validate(certs.secret_bytes(secret, "tls.crt"), certs.secret_bytes(secret, "tls.key"),
                              ca_pem, password)

    async def _pods_and_token(self, namespace: str, name: str) -> tuple[list[PodTarget], str]:
        pods = await self.api.list(PODS, namespace, resources.selector_labels(name))
        targets = [t for t in (PodTarget.from_pod(p) for p in pods) if t is not None]
        token = ""
        if targets:
            token = (await self._read("Secret", namespace, resources.admin_token_secret_name(name), "token")
                     or b"").decode()
        return sorted(targets, key=lambda t: t.name), token

    async def _check_certificates(self, body: dict, spec: dict, *, signal: bool,
                                  only: set[tuple[str, str]] | None = None,
                                  seen: tuple[float, float] | None = None,
                                  listener_ids: set[str] | None = None) -> dict[str, dict]:
        """Validate every TLS listener's material (or those that use ``only``, or those of ``listener_ids``); signal
        pods when asked. A new client-CA bundle is signalled only when no connected client would be locked out
        (``_client_ca_gate``).
        ``seen`` is when the change being signalled was seen (epoch and monotonic seconds): the rotation latency
        counts from there. Returns the status.listeners fields observed, per listener."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        state = self._state(namespace, name)
        pods: list[PodTarget] | None = None
        token = ""
        records: dict[str, dict[str, Any]] = {}
        for listener in tls_listeners(spec):
            if only is not None and not (only & referenced_objects({"listeners": [listener.spec]})):
                continue
            if listener_ids is not None and listener.listener_id not in listener_ids:
                continue
            tls = listener.spec["tls"]
            seen_wall, started = seen or (time.time(), time.monotonic())
            try:
                material = await self.load_material(namespace, listener)
            except certs.InvalidMaterial as exc:
                records[listener.name] = {"secretName": tls["secretName"], "reason": st.REFUSED,
                                          "lastError": f"{exc.reason}: {exc.message}"}
                marker = f"{exc.reason}:{exc.message}"
                if state.refused.get(listener.listener_id) != marker:
                    state.refused[listener.listener_id] = marker
                    kopf.warn(body, reason="CertificateRefused",
                              message=f"{listener.listener_id}: {exc.reason}: {exc.message}; pods keep the "
                                      f"certificate they serve")
                    self.metrics.rotations.labels(result="refused").inc()
                continue
            self._observed(state, namespace, name, listener.name, not_after=material.not_after)
            signalled = state.signalled.get(listener.listener_id)
            if not signal and signalled is not None and signalled != material.signature:
                continue  # new material the Secret's handler is signalling: it writes the record when done
            record: dict[str, Any] = {"secretName": tls["secretName"], "fingerprint": material.fingerprint,
                                      "notAfter": st.iso(material.not_after)}
            if signal:
                # Without signalling, what the pods serve is not known here: an earlier finding stays until the
                # pods are signalled (the Secret's event) or asked (the timer).
                state.refused.pop(listener.listener_id, None)
                state.client_ca_held.pop(listener.listener_id, None)  # the gate below holds it again if it must
                record.update(lastError=None, reason=None)
            if signal and state.signalled.get(listener.listener_id) != material.signature:
                if pods is None:
                    pods, token = await self._pods_and_token(namespace, name)
                if not pods:  # nothing runs yet: pods that start later load the current files
                    state.signalled[listener.listener_id] = material.signature
                    state.client_ca_held.pop(listener.listener_id, None)
                    state.client_ca.pop(listener.listener_id, None)
                    state.pending.pop(listener.listener_id, None)
                    self._observed(state, namespace, name, listener.name, not_serving=0, pending_since=0)
                    record.update(podsServing=0, podsTotal=0)
                    records[listener.name] = record
                    continue
                client_ca, forced, held = await self._client_ca_gate(body, state, listener, pods, token)
                if held is not None:
                    # Nothing is signalled (a reload would load the bundle, and any new leaf with it); the timer asks
                    # again. The pods keep serving what they serve.
                    record.update(lastError=held, reason=st.CLIENT_CA_LOCKOUT, podsTotal=len(pods))
                    records[listener.name] = record
                    continue
                earlier = state.pending.get(listener.listener_id)
                first_seen = earlier[1] if earlier else seen_wall
                state.pending[listener.listener_id] = (material.signature, first_seen, started)
                self._observed(state, namespace, name, listener.name, pending_since=first_seen)
                result = await self.admin.rotate(pods, token, listener.listener_id, material.fingerprint,
                                                 self.config.reload_wait,
                                                 client_ca_sha256=client_ca if forced else None)
                seconds = round(time.monotonic() - started, 3)
                complete = result.serving == len(pods)
                record.update(podsServing=result.serving, podsTotal=len(pods))
                self.metrics.rotation_finished(namespace, name, listener.name, seconds, complete,
                                               per_listener=self._current(state, namespace, name))
                self._observed(state, namespace, name, listener.name, not_serving=len(pods) - result.serving)
                if complete:
                    state.signalled[listener.listener_id] = material.signature
                    state.pending.pop(listener.listener_id, None)
                    if client_ca is not None:
                        state.client_ca[listener.listener_id] = client_ca
                    self._observed(state, namespace, name, listener.name, pending_since=0)
                    record.update(lastRotationTime=st.now_iso(), lastRotationSeconds=seconds)
                    kopf.event(body, type="Normal", reason="CertificateRotated",
                               message=f"{listener.listener_id} serves {material.fingerprint[:16]}… on "
                                       f"{result.serving}/{len(pods)} pods after {seconds:.2f}s")
                else:
                    record["lastError"] = "; ".join(result.errors)
                    record["reason"] = _failure_reason([o.status for o in result.outcomes if not o.ok])
                    kopf.warn(body, reason="RotationIncomplete",
                              message=f"{listener.listener_id}: {result.serving}/{len(pods)} pods serve "
                                      f"{material.fingerprint[:16]}…: {'; '.join(result.errors)}")
            records[listener.name] = record
        return records

    async def _client_ca_gate(self, body: dict, state: _BrokerState, listener: ListenerRef, pods: list[PodTarget],
                              token: str) -> tuple[str | None, bool, str | None]:
        """Before pods are told to load a listener's client-CA bundle (caRef) they were not told to load yet: ask
        each how many of its connected clients would no longer verify against it. Returns (the bundle's SHA-256,
        whether it is forced, None) when it may be signalled, or (digest, False, why not) when it is held: some
        client would be locked out, or a pod could not say. ``FORCE_CLIENT_CA_ANNOTATION`` set to the bundle's
        SHA-256 forces it: the reload then names it, so the brokers' guard (``client_ca_guard``) loads it too, now
        or when the kubelet projects it. Unforced, the reload does not name it: a broker that finds clients it
        would lock out by the time its files carry the bundle holds it, and the next pass asks again."""
        ref = listener.spec["tls"].get("caRef")
        if ref is None:
            return None, False, None
        namespace = body["metadata"]["namespace"]
        bundle = await self._read(ref.get("kind", "Secret"), namespace, ref["name"], ref.get("key", "ca.crt"))
        if not bundle:
            return None, False, None  # load_material refused it already
        digest = hashlib.sha256(bundle).hexdigest()
        listener_id = listener.listener_id
        if state.client_ca.get(listener_id) == digest:
            state.client_ca_held.pop(listener_id, None)
            return digest, False, None
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        forced = annotations.get(FORCE_CLIENT_CA_ANNOTATION, "").strip().lower() == digest
        answers = await asyncio.gather(*(self.admin.client_ca_check(pod, token, listener_id, bundle) for pod in pods),
                                       return_exceptions=True)
        failing, by_issuer, errors = 0, Counter[str](), []
        for answer in answers:
            if isinstance(answer, SignalError):
                errors.append(str(answer))
            elif isinstance(answer, BaseException):
                raise answer
            else:
                failing += int(answer.get("would_fail") or 0)
                for entry in answer.get("issuers") or []:
                    by_issuer[str(entry.get("issuer"))] += int(entry.get("clients") or 0)
        if not failing and not errors:
            state.client_ca_held.pop(listener_id, None)
            state.client_ca_warned.pop(listener_id, None)
            return digest, forced, None
        issuers = ", ".join(f"{issuer} ({count})" for issuer, count in sorted(by_issuer.items()))
        finding = (f"{failing} connected client(s) would no longer verify against the new client-CA bundle "
                   f"(sha256 {digest}): certificates issued by {issuers}" if failing else
                   f"the pods could not say whether the new client-CA bundle (sha256 {digest}) locks connected "
                   f"clients out")
        if errors:
            finding += f" ({'; '.join(errors)})"
        if forced:
            if state.client_ca_warned.get(listener_id) != f"forced:{digest}":
                state.client_ca_warned[listener_id] = f"forced:{digest}"
                kopf.warn(body, reason="ClientCAForced",
                          message=f"{listener_id}: {finding}; signalled anyway ({FORCE_CLIENT_CA_ANNOTATION})")
            state.client_ca_held.pop(listener_id, None)
            return digest, True, None
        held = f"{finding}; not signalled. Annotate {FORCE_CLIENT_CA_ANNOTATION}={digest} to signal it anyway"
        state.client_ca_held[listener_id] = digest
        if state.client_ca_warned.get(listener_id) != held:
            state.client_ca_warned[listener_id] = held
            kopf.warn(body, reason=st.CLIENT_CA_LOCKOUT, message=f"{listener_id}: {held}")
            self.metrics.rotations.labels(result="held").inc()
        return digest, False, held

    async def on_referenced_change(self, kind: str, namespace: str, obj_name: str, brokers: list[str]) -> None:
        """A Secret/ConfigMap that brokers load changed: validate it and signal the pods of each broker."""
        seen = (time.time(), time.monotonic())  # before any lock: a rotation's latency counts from here
        for broker in sorted(set(brokers)):
            body = await self.api.get(MQTTBROKERS, namespace, broker)
            if body is None or is_paused(body):
                continue
            async with self._state(namespace, broker).lock:
                spec = defaulted_spec(body.get("spec") or {})
                records = await self._check_certificates(body, spec, signal=True, only={(kind, obj_name)},
                                                         seen=seen)
                await self._write_status(body, spec, records=records)

    # --- the level-triggered safety net ------------------------------------------------------------------

    async def _ask_held_again(self, body: dict, spec: dict, state: _BrokerState) -> dict[str, dict]:
        """On a reconcile (an annotation change is one): held client-CA bundles are asked about again at once, so
        the force annotation acts without waiting for the timer."""
        if not state.client_ca_held:
            return {}
        return await self._check_certificates(body, spec, signal=True, listener_ids=set(state.client_ca_held))

    @staticmethod
    def _pods_hold_client_ca(state: _BrokerState, listener: ListenerRef, holding: list[Any]) -> None:
        """A pod's guard holds a client-CA bundle the operator signalled unforced (devices it would lock out
        connected before its files carried the bundle): the bundle counts as not signalled and held, so the next
        pass asks the pods again and says why it waits (or signals it, once nobody would be locked out)."""
        if any(holding):
            state.signalled.pop(listener.listener_id, None)
            state.client_ca.pop(listener.listener_id, None)
            state.client_ca_held[listener.listener_id] = next(h for h in holding if h).get("sha256", "")

    @staticmethod
    def _served_everywhere(state: _BrokerState, listener: ListenerRef, material: certs.Material) -> None:
        """Every pod serves the leaf: the material counts as signalled, unless this would be the first record of a
        client-CA bundle (what the pods loaded of it is not seen here, and a bundle the Secret's event is about
        to check must not pass for signalled)."""
        if listener.listener_id in state.signalled or "caRef" not in listener.spec["tls"]:
            state.signalled[listener.listener_id] = material.signature

    @staticmethod
    def _needs_signal_path(state: _BrokerState, listener: ListenerRef, material: certs.Material) -> bool:
        """Whether the timer must go the way a Secret's event goes (``_check_certificates``) rather than compare the
        served leaf, which does not show the CA bundles: a client-CA bundle is held back (asked again: the clients
        may have reconnected with certificates it trusts, or the annotation forces it); the CA bundles changed
        since the pods were last signalled."""
        signalled = state.signalled.get(listener.listener_id)
        return listener.listener_id in state.client_ca_held or (
            signalled is not None and signalled.partition("/")[2] != material.trust_digest)

    async def recheck(self, body: dict) -> None:
        """Ask every pod what it serves; re-signal pods that serve something else than the valid Secret."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if is_paused(body):
            return
        state = self._state(namespace, name)
        async with state.lock:
            spec = defaulted_spec(body.get("spec") or {})
            config = None
            if state.live_pending is not None:
                errors = await self._push_live_options(namespace, name, state.live_pending)
                if not errors:
                    state.live_pending = None
                    config = (True, "Applied", "TLS options applied live to the running pods")
            records: dict[str, dict] = {}
            pods, token = await self._pods_and_token(namespace, name)
            for listener in tls_listeners(spec):
                try:
                    material = await self.load_material(namespace, listener)
                except certs.InvalidMaterial:
                    continue  # reported by the Secret handler and reconciliation; nothing to re-signal
                if self._needs_signal_path(state, listener, material):
                    records.update(await self._check_certificates(body, spec, signal=True,
                                                                  listener_ids={listener.listener_id}))
                    continue
                serving, errors, statuses, resignalled, holding = 0, [], [], [], []
                for pod in pods:
                    try:
                        served = await self.admin.served_certificate(pod, token, listener.listener_id)
                        holding.append(served.get("client_ca_held"))
                        if served.get("fingerprint_sha256") != material.fingerprint:
                            outcome = await self.admin.reload(pod, token, listener.listener_id, material.fingerprint,
                                                              self.config.reload_wait)
                            if not outcome.ok:
                                errors.append(f"{pod.name}: {outcome.error}")
                                statuses.append(outcome.status)
                                continue
                            resignalled.append(pod.name)
                        serving += 1
                    except SignalError as exc:
                        errors.append(str(exc))
                        statuses.append(None)
                self._pods_hold_client_ca(state, listener, holding)
                self._observed(state, namespace, name, listener.name, not_after=material.not_after,
                                      not_serving=len(pods) - serving)
                pending = state.pending.get(listener.listener_id)
                if serving == len(pods):
                    self._served_everywhere(state, listener, material)
                    state.pending.pop(listener.listener_id, None)
                    self._observed(state, namespace, name, listener.name, pending_since=0)
                    if pending is not None and pending[0] == material.signature:
                        # A rotation the Secret's event left incomplete: finished now, counted from that event.
                        seconds = round(time.monotonic() - pending[2], 3)
                        if self._current(state, namespace, name):
                            self.metrics.rotation_completed(namespace, name, listener.name, seconds)
                        kopf.event(body, type="Normal", reason="CertificateRotated",
                                   message=f"{listener.listener_id} serves {material.fingerprint[:16]}… on "
                                           f"{serving}/{len(pods)} pods after {seconds:.2f}s (re-check)")
                if resignalled:
                    kopf.event(body, type="Normal", reason="PodsResignalled",
                               message=f"{listener.listener_id}: {', '.join(resignalled)} served another certificate "
                                       f"and now serve {material.fingerprint[:16]}…")
                records[listener.name] = {"secretName": listener.spec["tls"]["secretName"],
                                          "fingerprint": material.fingerprint, "notAfter": st.iso(material.not_after),
                                          "podsServing": serving, "podsTotal": len(pods),
                                          "lastError": "; ".join(errors) or None,
                                          "reason": _failure_reason(statuses) if errors else None}
            await self._write_status(body, spec, config=config, records=records)

    # --- periodic work (not kopf timers: those would put a finalizer on every MQTTBroker) -------------------

    def track(self, namespace: str, name: str) -> None:
        self._known.add((namespace, name))
        self._deleted.discard((namespace, name))

    def forget(self, namespace: str, name: str) -> None:
        self._known.discard((namespace, name))
        self._deleted.add((namespace, name))
        self._brokers.pop((namespace, name), None)
        # Every listener's series, whatever the spec said (it may be unknown: the periodic loop found it gone).
        self.metrics.forget(namespace, name)

    def start_periodic(self) -> None:
        """Start the resync and recheck loops once (stopped by ``close``)."""
        if self._periodic_started:
            return
        self._periodic_started = True
        for interval, work in ((self.config.resync_interval, "resync"), (self.config.recheck_interval, "recheck")):
            task = asyncio.get_running_loop().create_task(self._every(interval, work))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _every(self, interval: float, work: str) -> None:
        """Every ``interval`` seconds, visit each MQTTBroker seen: read it afresh (gone: forget it), skip it while
        paused, else reconcile it ("resync") or re-check what its pods serve ("recheck"). Brokers are visited
        side by side (at most ``PERIODIC_CONCURRENCY`` at once), so one whose pods are slow to answer (a reload
        may wait ``reload_wait``) does not hold the others back."""
        bound = asyncio.Semaphore(PERIODIC_CONCURRENCY)

        async def visit(namespace: str, name: str) -> None:
            async with bound:
                try:
                    body = await self.api.get(MQTTBROKERS, namespace, name)
                    if body is None:
                        self.forget(namespace, name)
                        return
                    if is_paused(body) or (body.get("metadata") or {}).get("deletionTimestamp"):
                        return
                    if work == "resync":
                        await self.reconcile(body, trigger="resync")
                    else:
                        await self.recheck(body)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    self.metrics.errors.labels(handler=work).inc()
                    if work == "resync":
                        self.metrics.reconciles.labels(result="error").inc()
                    log.exception("%s of MQTTBroker %s/%s failed", work, namespace, name)

        while True:
            await asyncio.sleep(interval)
            await asyncio.gather(*(visit(namespace, name) for namespace, name in sorted(self._known)))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.admin.close()
        await self.api.close()


# Conditions whose True is the healthy state (for Stalled it is False; Paused and Reconciling are neither).
_HEALTHY_WHEN_TRUE = {st.READY, st.CERTIFICATES_READY, st.CONFIG_APPLIED, st.CLUSTERED}


def _post_condition_changes(body: dict, before: list[dict], after: list[dict]) -> None:
    """One event per condition whose status changed (reason ``<Type><Status>``, e.g. ``ReadyFalse``); a Warning
    when it turned unhealthy. A condition seen for the first time is the initial state, not a change."""
    previous = {c.get("type"): c.get("status") for c in before}
    for condition in after:
        ctype, status = condition.get("type"), condition.get("status")
        if ctype not in previous or previous[ctype] == status:
            continue
        unhealthy = (ctype in _HEALTHY_WHEN_TRUE and status != "True") or (ctype == st.STALLED and status == "True")
        kopf.event(body, type="Warning" if unhealthy else "Normal", reason=f"{ctype}{status}",
                   message=f"{ctype}: {previous[ctype]} -> {status} ({condition.get('reason')}): "
                           f"{condition.get('message') or ''}".rstrip(": "))


def _failure_reason(statuses: list[int | None]) -> str:
    """Why pods do not serve a valid certificate, from their reload answers: 409 only (their files do not carry
    the Secret yet) is the kubelet still propagating it, not a refusal."""
    if statuses and all(status == 409 for status in statuses):
        return st.WAITING_FOR_KUBELET
    if any(status == 422 for status in statuses):
        return st.REFUSED
    return st.NOT_SERVED


def _rolling(sts: dict | None) -> bool:
    """Whether the StatefulSet controller is still moving pods to the current template (as ``kubectl rollout
    status`` decides it); unknown (no status yet) is not rolling."""
    status = (sts or {}).get("status") or {}
    if not sts or not status:
        return False
    if status.get("observedGeneration") is not None and status["observedGeneration"] < sts["metadata"].get(
            "generation", 0):
        return True
    replicas = (sts.get("spec") or {}).get("replicas", 0)
    if status.get("updateRevision") and status.get("currentRevision") != status.get("updateRevision"):
        return True
    return status.get("updatedReplicas") is not None and int(status["updatedReplicas"]) < replicas


def _image(sts: dict | None) -> str | None:
    """The broker container's image in a StatefulSet's pod template (None: no StatefulSet yet)."""
    containers = (((sts or {}).get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
    return next((c.get("image") for c in containers if c.get("name") == "broker"), None)


def _check_loads(hocon: str) -> None:
    """Refuse a config the broker itself would refuse (when the broker's loader is importable).

    Files named by the config exist only inside the pods, so "file not found" is not held against it here.
    """
    try:
        from wharf_broker.config.errors import ConfigError
        from wharf_broker.config.loader import load_string
    except ImportError:
        return
    try:
        load_string(hocon, "rendered config")
    except ConfigError as exc:
        issues = [i for i in exc.issues if not (i.message.startswith("file ") and " not found" in i.message)]
        if issues:
            raise render.RenderError("the broker refuses the rendered config: "
                                     + "; ".join(str(i) for i in issues)) from None


__all__ = ["MQTTBROKERS", "ApiError", "Controller", "OperatorConfig", "is_paused", "referenced_objects"]
