"""The operator keeps its own CRD current (``wharf-operator --apply-crd``): Helm installs the chart's ``crds/`` once
and never upgrades them, so after ``helm upgrade`` the API server would go on validating, defaulting and pruning
MQTTBrokers with the old schema (a new field silently dropped).

At start, before any watch, the operator reads the installed CRD and compares the revision and digest that
``crd.py`` writes into its annotations with its own:

- installed revision higher: left alone. An older operator (a rollback, a stale replica) never downgrades the
  schema: the API server prunes fields a schema does not know, from stored objects too.
- same revision and digest: nothing to do (the common case: one GET).
- otherwise (lower revision, no annotations: a CRD of a chart before revisions existed, or a hand edit): server-side
  apply of the whole CRD as field manager ``wharf-operator``, forced: the operator owns its schema, whoever
  (Helm's create, ``kubectl apply``) wrote it before. ``spec.versions`` and each version's schema are atomic for
  server-side apply, so the apply replaces them whole: a property or a version the new CRD drops disappears.

The CRD is never created: the RBAC (get and patch, ``resourceNames`` the one CRD) cannot name an object that does
not exist yet, and installing it is the chart's (or ``kubectl apply``'s) job.
"""

from __future__ import annotations

import logging

from . import crd
from .kube import ApiError, KubeApi, Resource

CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)
MANUAL_STEP = "kubectl apply --server-side --force-conflicts -f crds/ of the new chart (or manifests/crds/)"

log = logging.getLogger(__name__)


class CrdUpgradeError(Exception):
    """The CRD could not be checked or upgraded; the message says what to do instead."""


def installed_revision(live: dict) -> tuple[int, str | None]:
    """The schema revision and digest an installed CRD carries (0 and None: from before revisions existed)."""
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    try:
        revision = int(annotations.get(crd.REVISION_ANNOTATION, "0"))
    except ValueError:
        revision = 0
    return revision, annotations.get(crd.DIGEST_ANNOTATION)


def decide(live: dict, desired: dict) -> str:
    """"apply", "current" (same revision and digest) or "newer" (the installed schema is ahead: leave it)."""
    live_revision, live_digest = installed_revision(live)
    revision, digest = installed_revision(desired)
    if live_revision > revision:
        return "newer"
    if live_revision == revision and live_digest == digest:
        return "current"
    return "apply"


async def ensure_current(api: KubeApi) -> str:
    """Bring the installed CRD to this operator's schema when it is behind; "applied", "current" or "newer"."""
    desired = crd.crd_manifest()
    try:
        live = await api.get(CRDS, None, crd.CRD_NAME)
    except ApiError as exc:
        raise CrdUpgradeError(f"cannot read CRD {crd.CRD_NAME} (HTTP {exc.status}); give the operator get and "
                              f"patch on it, or run before every upgrade: {MANUAL_STEP}") from exc
    if live is None:
        raise CrdUpgradeError(f"CRD {crd.CRD_NAME} is not installed; install it first: {MANUAL_STEP}")
    verdict = decide(live, desired)
    if verdict != "apply":
        return verdict
    try:
        await api.apply(CRDS, None, crd.CRD_NAME, desired, force=True)
    except ApiError as exc:
        raise CrdUpgradeError(f"cannot upgrade CRD {crd.CRD_NAME} (HTTP {exc.status}: {exc.body[:200]}); give the "
                              f"operator patch on it, or run before every upgrade: {MANUAL_STEP}") from exc
    return "applied"


async def upgrade_at_start(api: KubeApi) -> bool:
    """``ensure_current`` with its outcome logged; False when it failed (the operator goes on with the installed
    schema: new fields are refused or dropped by the API server until the CRD is upgraded)."""
    try:
        revision = installed_revision(crd.crd_manifest())[0]
        verdict = await ensure_current(api)
    except CrdUpgradeError as exc:
        log.error("CRD upgrade: %s", exc)
        return False
    finally:
        await api.close()
    messages = {"applied": "upgraded the installed CRD %s to schema revision %d",
                "current": "CRD %s is current (schema revision %d)",
                "newer": "CRD %s is newer than this operator's schema revision %d; left as it is"}
    log.info(messages[verdict], crd.CRD_NAME, revision)
    return True
