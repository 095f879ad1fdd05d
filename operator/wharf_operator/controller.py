"""What the operator does for one MQTTBroker: reconcile owned objects, validate certificates, signal pods.

``handlers.py`` wires these methods to kopf; this module knows nothing about how it is triggered. A per-broker
lock serialises the Secret handler, the timer and reconciliation, so two rotations of one broker never overlap.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import certs, nats, render, resources
from . import status as st
from .crd import GROUP, PAUSE_ANNOTATION, PLURAL, VERSION, defaulted_spec
from .kube import (
    CERTIFICATES,
    CONFIGMAPS,
    PDBS,
    PODS,
    SECRETS,
    SERVICEACCOUNTS,
    SERVICES,
    STATEFULSETS,
    ApiError,
    KubeApi,
    Resource,
)
from .metrics import OperatorMetrics
from .signalling import BrokerAdmin, PodTarget, SignalError

MQTTBROKERS = Resource(GROUP, VERSION, PLURAL)
log = logging.getLogger("wharf_operator")


@dataclass
class OperatorConfig:
    # How often the timer re-checks what every pod serves.
    recheck_interval: float = 60.0
    # How long a pod may wait for the kubelet to project a new Secret before it answers 409 (kubelet sync is
    # about a minute plus its cache delay).
    reload_wait: float = 90.0


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
        if "caRef" in tls:
            refs.add((tls["caRef"].get("kind", "Secret"), tls["caRef"]["name"]))
        if "keyPasswordSecretRef" in tls:
            refs.add(("Secret", tls["keyPasswordSecretRef"]["name"]))
    return refs


def is_paused(body: dict) -> bool:
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(PAUSE_ANNOTATION, "")).lower() == "true"


def _owner_ref(body: dict) -> dict:
    meta = body["metadata"]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MQTTBroker", "name": meta["name"], "uid": meta.get("uid"),
            "controller": True, "blockOwnerDeletion": True}


@dataclass
class _BrokerState:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # listener id -> material (leaf fingerprint and CA bundle digest) every pod was last told to load
    signalled: dict[str, str] = field(default_factory=dict)
    # listener id -> the refusal last reported, so a Secret that stays invalid is not reported on every event
    refused: dict[str, str] = field(default_factory=dict)
    # TLS options some running pod has not accepted yet; the timer pushes them again
    live_pending: dict[str, dict] | None = None


class Controller:
    def __init__(self, api: KubeApi, admin: BrokerAdmin, config: OperatorConfig | None = None,
                 metrics: OperatorMetrics | None = None) -> None:
        self.api = api
        self.admin = admin
        self.config = config or OperatorConfig()
        self.metrics = metrics or OperatorMetrics()
        self._brokers: dict[tuple[str, str], _BrokerState] = {}

    def _state(self, namespace: str, name: str) -> _BrokerState:
        return self._brokers.setdefault((namespace, name), _BrokerState())

    # --- owned objects -----------------------------------------------------------------------------------

    async def _apply(self, resource: Resource, body: dict, owner: dict, *, create_only: bool = False) -> str:
        """Create, or merge-patch when the live object lacks something desired; "created"/"updated"/"unchanged"."""
        meta = body["metadata"]
        meta["ownerReferences"] = [owner]
        existing = await self.api.get(resource, meta["namespace"], meta["name"])
        if existing is None:
            await self.api.create(resource, meta["namespace"], body)
            return "created"
        if create_only:
            return "unchanged"
        patch = {key: value for key, value in body.items()
                 if key not in ("apiVersion", "kind", "metadata") and not resources.is_subset(value, existing.get(key))}
        wanted_meta = {k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta}
        if not resources.is_subset(wanted_meta, existing.get("metadata") or {}):
            patch["metadata"] = wanted_meta
        if not patch:
            return "unchanged"
        await self.api.patch(resource, meta["namespace"], meta["name"], patch)
        return "updated"

    async def reconcile(self, body: dict) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        generation = meta.get("generation")
        async with self._state(namespace, name).lock:
            if is_paused(body):
                await self._patch_status(namespace, name, lambda s: {
                    "conditions": st.set_condition(s.get("conditions"), st.PAUSED, True, "PauseAnnotation",
                                                   f"{PAUSE_ANNOTATION} is true: not reconciling")})
                self.metrics.reconciles.labels(result="paused").inc()
                return
            spec = defaulted_spec(body.get("spec") or {})
            try:
                tree = render.config_tree(spec, broker=name, namespace=namespace)
                hocon = render.to_hocon(tree)
                _check_loads(hocon)
            except render.RenderError as exc:
                await self._refuse_config(body, str(exc), generation)
                return
            owner = _owner_ref(body)
            live_options = render.live_ssl_options(tree)
            live_hash = hashlib.sha256(json.dumps(live_options, sort_keys=True).encode()).hexdigest()[:16]
            previous_cm = await self.api.get(CONFIGMAPS, namespace, resources.config_map_name(name))
            previous_live = ((previous_cm or {}).get("metadata", {}).get("annotations") or {}).get(
                resources.LIVE_OPTIONS_ANNOTATION)
            restart = render.restart_hash(tree)
            results = {
                "token": await self._apply(SECRETS, resources.admin_token_secret(name, namespace), owner,
                                           create_only=True),
                "serviceaccount": await self._apply(SERVICEACCOUNTS, resources.service_account(name, namespace), owner),
                "configmap": await self._apply(CONFIGMAPS, resources.config_map(name, namespace, hocon, live_hash),
                                               owner),
                "headless": await self._apply(SERVICES, resources.headless_service(name, namespace, spec), owner),
                "service": await self._apply(SERVICES, resources.client_service(name, namespace, spec), owner),
                "pdb": await self._apply(PDBS, resources.pod_disruption_budget(name, namespace, spec), owner),
            }
            statefulset = resources.stateful_set(name, namespace, spec, restart)
            previous_sts = await self.api.get(STATEFULSETS, namespace, name)
            results["statefulset"] = await self._apply(STATEFULSETS, statefulset, owner)
            certificate = resources.certificate(name, namespace, spec)
            if certificate is not None:
                results["certificate"] = await self._apply(CERTIFICATES, certificate, owner)
            results.update(await self._reconcile_nats(namespace, name, spec, owner))
            changed = [kind for kind, result in results.items() if result != "unchanged"]
            log.info("MQTTBroker %s/%s reconciled; changed: %s", namespace, name, ", ".join(changed) or "nothing")

            # ssl_options that changed while the pods stay: push them to the running brokers.
            previous_restart = ((previous_sts or {}).get("spec", {}).get("template", {}).get("metadata", {})
                                .get("annotations") or {}).get(resources.CONFIG_HASH_ANNOTATION)
            config_message = "config rendered and applied"
            if previous_live and previous_live != live_hash and previous_restart == restart:
                errors = await self._push_live_options(namespace, name, live_options)
                self._state(namespace, name).live_pending = live_options if errors else None
                if errors:
                    config_message = "some pods refused the new TLS options: " + "; ".join(errors)
                else:
                    config_message = "TLS options applied live to the running pods"
                    kopf.event(body, type="Normal", reason="ConfigAppliedLive", message=config_message)
            elif previous_restart and previous_restart != restart:
                self._state(namespace, name).live_pending = None  # new pods start with the new config
                kopf.event(body, type="Normal", reason="RollingUpdate",
                           message="config change needs new pods; rolling them one at a time")
            elif self._state(namespace, name).live_pending is not None:
                config_message = "some pods refused the new TLS options; retrying"
            applied_ok = not config_message.startswith("some pods")
            if spec["replicas"] > 1 and not spec.get("cluster"):
                kopf.warn(body, reason="IndependentBrokers",
                          message=f"{spec['replicas']} replicas without spec.cluster run as independent brokers")
            await self._check_certificates(body, spec, signal=False)
            await self._refresh_cluster(namespace, name, spec)
            ready = await self._ready_replicas(namespace, name)
            # observedGeneration, ConfigApplied and Ready in one write: a reader that sees this generation
            # reconciled also sees whether it is ready (written apart, a reader could see the first without the
            # second).
            await self._patch_status(namespace, name, lambda s: {
                "observedGeneration": generation,
                "selector": resources.selector_string(name),
                "replicas": spec["replicas"],
                "readyReplicas": ready,
                "conditions": _with_ready(st.set_condition(
                    st.set_condition(s.get("conditions"), st.PAUSED, False, "Reconciling", "reconciliation runs"),
                    st.CONFIG_APPLIED, applied_ok, "Applied" if applied_ok else "LiveUpdateRefused",
                    config_message, generation), ready, spec["replicas"]),
            })
            self.metrics.reconciles.labels(result="success").inc()

    async def _reconcile_nats(self, namespace: str, name: str, spec: dict, owner: dict) -> dict[str, str]:
        """The deployed NATS cluster's objects when spec.cluster.nats.deploy is true; otherwise none of them."""
        wanted = ((spec.get("cluster") or {}).get("nats") or {}).get("deploy", False)
        objects = [(CONFIGMAPS, nats.config_map_name(name)), (SERVICES, nats.headless_service_name(name)),
                   (SERVICES, nats.name(name)), (PDBS, nats.name(name)), (STATEFULSETS, nats.name(name))]
        if not wanted:
            results: dict[str, str] = {}
            for resource, obj_name in objects:
                existing = await self.api.get(resource, namespace, obj_name)
                owners = ((existing or {}).get("metadata") or {}).get("ownerReferences") or []
                # Only what this MQTTBroker owns: a same-named object of someone else's is left alone.
                if existing is not None and any(ref.get("uid") == owner["uid"] for ref in owners):
                    await self.api.delete(resource, namespace, obj_name)
                    results[f"nats-{resource.plural}-{obj_name}"] = "deleted"
            return results
        statefulset = nats.stateful_set(name, namespace, spec)
        if await self.api.get(STATEFULSETS, namespace, nats.name(name)) is not None:
            # volumeClaimTemplates cannot change on a live StatefulSet; a new size applies to new volumes only
            # if the StatefulSet is recreated (documented).
            statefulset["spec"].pop("volumeClaimTemplates")
        return {
            "nats-config": await self._apply(CONFIGMAPS, nats.config_map(name, namespace, spec), owner),
            "nats-headless": await self._apply(SERVICES, nats.headless_service(name, namespace), owner),
            "nats-service": await self._apply(SERVICES, nats.client_service(name, namespace), owner),
            "nats-pdb": await self._apply(PDBS, nats.pod_disruption_budget(name, namespace), owner),
            "nats-statefulset": await self._apply(STATEFULSETS, statefulset, owner),
        }

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

    async def _refresh_cluster(self, namespace: str, name: str, spec: dict) -> None:
        if spec.get("cluster"):
            cluster, ok, reason, message = await self._cluster_status(namespace, name, spec)
        elif spec["replicas"] > 1:
            cluster, ok, reason, message = None, False, "IndependentBrokers", (
                f"{spec['replicas']} replicas without spec.cluster: each pod is an independent broker, and clients "
                "on different pods do not receive each other's messages")
        else:
            cluster, ok, reason, message = None, False, "Standalone", "one broker; spec.cluster is not set"
        await self._patch_status(namespace, name, lambda s: {
            "cluster": cluster,
            "conditions": st.set_condition(s.get("conditions"), st.CLUSTERED, ok, reason, message)})

    async def _refuse_config(self, body: dict, message: str, generation: int | None) -> None:
        meta = body["metadata"]
        kopf.warn(body, reason="InvalidConfig", message=message)
        await self._patch_status(meta["namespace"], meta["name"], lambda s: {
            "conditions": st.set_condition(s.get("conditions"), st.CONFIG_APPLIED, False, "InvalidConfig", message,
                                           generation)})
        self.metrics.reconciles.labels(result="invalid").inc()

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

    # --- status helpers ---------------------------------------------------------------------------------

    async def _patch_status(self, namespace: str, name: str, build) -> None:
        """Read the current status, build the changed fields from it, write them to the status subresource."""
        current = await self.api.get(MQTTBROKERS, namespace, name)
        if current is None:
            return
        changes = build(current.get("status") or {})
        await self.api.patch(MQTTBROKERS, namespace, name, {"status": changes}, subresource="status")

    async def _ready_replicas(self, namespace: str, name: str) -> int:
        sts = await self.api.get(STATEFULSETS, namespace, name)
        return int(((sts or {}).get("status") or {}).get("readyReplicas") or 0)

    async def _refresh_readiness(self, namespace: str, name: str, spec: dict) -> None:
        await self._refresh_cluster(namespace, name, spec)
        ready = await self._ready_replicas(namespace, name)
        await self._patch_status(namespace, name, lambda s: {
            "readyReplicas": ready, "conditions": _with_ready(s.get("conditions"), ready, spec["replicas"])})

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
        # The server chain must lead to its issuer as cert-manager records it (the Secret's ca.crt) or to the
        # listener's CA bundle; which one depends on whether servers and clients share a CA.
        ca_pem = certs.secret_bytes(secret, "ca.crt") or b""
        if "caRef" in tls:
            ref = tls["caRef"]
            bundle = await self._read(ref.get("kind", "Secret"), namespace, ref["name"], ref.get("key", "ca.crt"))
            if not bundle:
                raise certs.InvalidMaterial(certs.MISSING, f"CA bundle {ref.get('kind', 'Secret')} {ref['name']} "
                                                           f"key {ref.get('key', 'ca.crt')} not found")
            ca_pem = ca_pem.rstrip(b"\n") + b"\n" + bundle if ca_pem else bundle
        password = None
        if "keyPasswordSecretRef" in tls:
            ref = tls["keyPasswordSecretRef"]
            password = await self._read("Secret", namespace, ref["name"], ref.get("key", "password"))
            if password is None:
                raise certs.InvalidMaterial(certs.MISSING, f"key password Secret {ref['name']} not found")
            password = password.rstrip(b"\r\n")
        return certs.validate(certs.secret_bytes(secret, "tls.crt"), certs.secret_bytes(secret, "tls.key"),
                              ca_pem or None, password)

    async def _pods_and_token(self, namespace: str, name: str) -> tuple[list[PodTarget], str]:
        pods = await self.api.list(PODS, namespace, resources.selector_labels(name))
        targets = [t for t in (PodTarget.from_pod(p) for p in pods) if t is not None]
        token = ""
        if targets:
            token = (await self._read("Secret", namespace, resources.admin_token_secret_name(name), "token")
                     or b"").decode()
        return sorted(targets, key=lambda t: t.name), token

    async def _check_certificates(self, body: dict, spec: dict, *, signal: bool,
                                  only: set[tuple[str, str]] | None = None) -> None:
        """Validate every TLS listener's material (or those that use ``only``); signal pods when asked."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        state = self._state(namespace, name)
        pods: list[PodTarget] | None = None
        token = ""
        records: dict[str, dict[str, Any]] = {}
        for listener in tls_listeners(spec):
            if only is not None and not (only & referenced_objects({"listeners": [listener.spec]})):
                continue
            tls = listener.spec["tls"]
            started = time.monotonic()
            try:
                material = await self.load_material(namespace, listener)
            except certs.InvalidMaterial as exc:
                records[listener.name] = {"secretName": tls["secretName"], "lastError": f"{exc.reason}: {exc.message}"}
                marker = f"{exc.reason}:{exc.message}"
                if state.refused.get(listener.listener_id) != marker:
                    state.refused[listener.listener_id] = marker
                    kopf.warn(body, reason="CertificateRefused",
                              message=f"{listener.listener_id}: {exc.reason}: {exc.message}; pods keep the "
                                      f"certificate they serve")
                    self.metrics.rotations.labels(result="refused").inc()
                continue
            state.refused.pop(listener.listener_id, None)
            record: dict[str, Any] = {"secretName": tls["secretName"], "fingerprint": material.fingerprint,
                                      "notAfter": st.iso(material.not_after), "lastError": None}
            if signal and state.signalled.get(listener.listener_id) != material.signature:
                if pods is None:
                    pods, token = await self._pods_and_token(namespace, name)
                if not pods:  # nothing runs yet: pods that start later load the current files
                    state.signalled[listener.listener_id] = material.signature
                    record.update(podsServing=0, podsTotal=0)
                    records[listener.name] = record
                    continue
                result = await self.admin.rotate(pods, token, listener.listener_id, material.fingerprint,
                                                 self.config.reload_wait)
                seconds = round(time.monotonic() - started, 3)
                complete = result.serving == len(pods)
                record.update(podsServing=result.serving, podsTotal=len(pods))
                self.metrics.rotation_finished(namespace, name, listener.name, seconds, complete)
                if complete:
                    state.signalled[listener.listener_id] = material.signature
                    record.update(lastRotationTime=st.now_iso(), lastRotationSeconds=seconds)
                    kopf.event(body, type="Normal", reason="CertificateRotated",
                               message=f"{listener.listener_id} serves {material.fingerprint[:16]}… on "
                                       f"{result.serving}/{len(pods)} pods after {seconds:.2f}s")
                else:
                    record["lastError"] = "; ".join(result.errors)
                    kopf.warn(body, reason="RotationIncomplete",
                              message=f"{listener.listener_id}: {result.serving}/{len(pods)} pods serve "
                                      f"{material.fingerprint[:16]}…: {'; '.join(result.errors)}")
            records[listener.name] = record
        if records:
            await self._write_certificate_status(namespace, name, records, spec)

    async def _write_certificate_status(self, namespace: str, name: str, records: dict[str, dict],
                                        spec: dict) -> None:
        current = {listener.name for listener in tls_listeners(spec)}

        def build(s: dict) -> dict:
            listeners = [e for e in s.get("listeners") or [] if e.get("name") in current]
            for listener_name, fields in records.items():
                listeners = st.merge_listener(listeners, listener_name, **fields)
            problems = [f"{e['name']}: {e['lastError']}" for e in listeners if e.get("lastError")]
            ok = not problems
            return {"listeners": listeners, "earliestCertificateExpiry": st.earliest_expiry(listeners),
                    "conditions": st.set_condition(
                        s.get("conditions"), st.CERTIFICATES_READY, ok, "Valid" if ok else "Refused",
                        "every TLS listener has valid material served by every pod" if ok else "; ".join(problems))}

        await self._patch_status(namespace, name, build)

    async def on_referenced_change(self, kind: str, namespace: str, obj_name: str, brokers: list[str]) -> None:
        """A Secret/ConfigMap that brokers load changed: validate it and signal the pods of each broker."""
        for broker in sorted(set(brokers)):
            body = await self.api.get(MQTTBROKERS, namespace, broker)
            if body is None or is_paused(body):
                continue
            async with self._state(namespace, broker).lock:
                spec = defaulted_spec(body.get("spec") or {})
                await self._check_certificates(body, spec, signal=True, only={(kind, obj_name)})
                await self._refresh_readiness(namespace, broker, spec)

    # --- the level-triggered safety net ------------------------------------------------------------------

    async def recheck(self, body: dict) -> None:
        """Ask every pod what it serves; re-signal pods that serve something else than the valid Secret."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if is_paused(body):
            return
        state = self._state(namespace, name)
        async with state.lock:
            spec = defaulted_spec(body.get("spec") or {})
            if state.live_pending is not None:
                errors = await self._push_live_options(namespace, name, state.live_pending)
                if not errors:
                    state.live_pending = None
                    await self._patch_status(namespace, name, lambda s: {"conditions": st.set_condition(
                        s.get("conditions"), st.CONFIG_APPLIED, True, "Applied",
                        "TLS options applied live to the running pods", (body.get("metadata") or {}).get("generation"))})
            pods, token = await self._pods_and_token(namespace, name)
            records: dict[str, dict] = {}
            for listener in tls_listeners(spec):
                try:
                    material = await self.load_material(namespace, listener)
                except certs.InvalidMaterial:
                    continue  # reported by the Secret handler and reconciliation; nothing to re-signal
                serving, errors = 0, []
                for pod in pods:
                    try:
                        served = await self.admin.served_certificate(pod, token, listener.listener_id)
                        if served.get("fingerprint_sha256") != material.fingerprint:
                            outcome = await self.admin.reload(pod, token, listener.listener_id, material.fingerprint,
                                                              self.config.reload_wait)
                            if not outcome.ok:
                                errors.append(f"{pod.name}: {outcome.error}")
                                continue
                        serving += 1
                    except SignalError as exc:
                        errors.append(str(exc))
                if serving == len(pods):
                    self._state(namespace, name).signalled[listener.listener_id] = material.signature
                records[listener.name] = {"secretName": listener.spec["tls"]["secretName"],
                                          "fingerprint": material.fingerprint, "notAfter": st.iso(material.not_after),
                                          "podsServing": serving, "podsTotal": len(pods),
                                          "lastError": "; ".join(errors) or None}
            if records:
                await self._write_certificate_status(namespace, name, records, spec)
            await self._refresh_readiness(namespace, name, spec)

    async def on_statefulset_change(self, namespace: str, name: str) -> None:
        """The brokers' StatefulSet changed (pods became ready or not): refresh Ready and readyReplicas."""
        body = await self.api.get(MQTTBROKERS, namespace, name)
        if body is None or is_paused(body):
            return
        async with self._state(namespace, name).lock:
            await self._refresh_readiness(namespace, name, defaulted_spec(body.get("spec") or {}))

    def forget(self, namespace: str, name: str, spec: dict) -> None:
        self._brokers.pop((namespace, name), None)
        self.metrics.forget(namespace, name, [l.name for l in tls_listeners(defaulted_spec(spec))])

    async def close(self) -> None:
        await self.admin.close()
        await self.api.close()


def _with_ready(conditions: list[dict] | None, ready: int, wanted: int) -> list[dict]:
    """The conditions with Ready computed from the others and the ready pods."""
    certs_ok = (st.get_condition(conditions, st.CERTIFICATES_READY) or {}).get("status") != "False"
    config_ok = (st.get_condition(conditions, st.CONFIG_APPLIED) or {}).get("status") == "True"
    is_ready = ready >= wanted and certs_ok and config_ok
    if is_ready:
        reason, message = "AllPodsReady", f"{ready}/{wanted} pods ready"
    elif not config_ok:
        reason, message = "ConfigNotApplied", "the config is not applied"
    elif not certs_ok:
        reason, message = "CertificatesNotReady", "a listener's certificate is refused or not served"
    else:
        reason, message = "WaitingForPods", f"{ready}/{wanted} pods ready"
    return st.set_condition(conditions, st.READY, is_ready, reason, message)


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
