"""``wharf-operator``: runs the MQTTBroker operator (kopf) against a cluster.

Credentials: in-cluster ServiceAccount when running in a pod, else ``--kubeconfig`` or KUBECONFIG (or
~/.kube/config). Scope: every namespace by default, or only the ``--namespace`` values given (the RBAC can then
be a Role per namespace). Serves a liveness endpoint (kopf's) and Prometheus metrics.

With ``--leader-elect`` (the chart's default) several replicas may run: one holds a Lease and operates, the others
stand by (liveness endpoint only) until it is free (``leader.py``); a leader that loses the Lease exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import urllib.parse
import uuid

from aiohttp import web

from . import __version__
from .metrics import OperatorMetrics
from .signalling import ALL_NETWORKS, BrokerAdmin

# kopf (and the kubernetes client) come with the `operator` extra: without it, say what to install in one line
# instead of a traceback (main() checks this after parsing, so --help and --version still work).
EXTRA_MODULES = ("kopf", "kubernetes")
INSTALL_HINT = "pip install 'wharf[operator]'"
try:
    import kopf

    from . import credentials, crd_upgrade
    from .controller import Controller, OperatorConfig
    from .handlers import build_registry
    from .leader import LeaderElector, LeaseTiming
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] not in EXTRA_MODULES:
        raise
    MISSING_MODULE: str | None = exc.name
else:
    MISSING_MODULE = None

# Networks the operator may call pods in, when --allow-pod-network is not given. The test suite sets it to
# 127.0.0.0/8 for every process it starts, so no test can ever reach a real address.
ALLOW_ENV = "WHARF_OPERATOR_ALLOW_POD_NETWORKS"
# The image of brokers without spec.image, when --broker-image is not given (else resources.DEFAULT_BROKER_IMAGE).
BROKER_IMAGE_ENV = "WHARF_BROKER_IMAGE"
# Where the operator's own pod runs (the chart sets both from the downward API).
POD_NAMESPACE_ENV, POD_NAME_ENV = "POD_NAMESPACE", "POD_NAME"
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
log = logging.getLogger("wharf_operator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wharf-operator", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then KUBECONFIG, ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context to use")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[],
                       help="watch only this namespace (repeatable)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz",
                        help="liveness endpoint URL served by the operator ('' to disable)")
    parser.add_argument("--metrics-bind", default="0.0.0.0", help="address of the Prometheus metrics endpoint")
    parser.add_argument("--metrics-port", type=int, default=9090,
                        help="port of the Prometheus metrics endpoint (/metrics); 0 disables it")
    parser.add_argument("--recheck-interval", type=float, default=60.0,
                        help="seconds between checks of what every broker pod serves")
    parser.add_argument("--resync-interval", type=float, default=60.0,
                        help="seconds between reconciliations of every MQTTBroker with nothing changed (drift repair)")
    parser.add_argument("--conflict-backoff", type=float, default=30.0,
                        help="seconds a field another manager changed again stays theirs before it is taken back")
    parser.add_argument("--reload-wait", type=float, default=90.0,
                        help="seconds a pod may wait for a rotated Secret to reach its files")
    parser.add_argument("--signal-timeout", type=float, default=10.0,
                        help="timeout in seconds of a call to a broker's admin API (plus --reload-wait for reloads)")
    parser.add_argument("--allow-pod-network", action="append", default=[],
                        help=f"CIDR the operator may call broker pods in (repeatable; default: ${ALLOW_ENV} "
                             "(comma-separated), else any)")
    parser.add_argument("--broker-image",
                        help="image of the brokers of MQTTBrokers without spec.image; changing it rolls them to "
                             f"the new image (default: ${BROKER_IMAGE_ENV}, else wharf:{__version__}; the chart "
                             "passes its own image)")
    parser.add_argument("--network-policy", action=argparse.BooleanOptionalAction, default=True,
                        help="give every MQTTBroker that leaves spec.networkPolicy.enabled unset a NetworkPolicy "
                             "(admin API only from the operator's pods; default: on)")
    parser.add_argument("--operator-namespace",
                        help=f"namespace of the operator's own pods, the only ones the NetworkPolicies let reach the "
                             f"brokers' admin API (default: ${POD_NAMESPACE_ENV}, else the pod's own namespace)")
    parser.add_argument("--operator-pod-label", action="append", default=[], metavar="KEY=VALUE",
                        help="a label of the operator's own pods (repeatable; the chart passes its selector labels)")
    parser.add_argument("--apply-crd", action="store_true",
                        help="at start, upgrade the installed MQTTBroker CRD by server-side apply when its schema "
                             "revision is older than this operator's (needs get and patch on that CRD)")
    parser.add_argument("--leader-elect", action="store_true",
                        help="run as one of several replicas: operate only while holding a coordination.k8s.io "
                             "Lease, stand by otherwise")
    parser.add_argument("--leader-election-namespace",
                        help=f"namespace of the Lease (default: ${POD_NAMESPACE_ENV}, else the pod's own namespace)")
    parser.add_argument("--leader-election-id", default="wharf-operator", help="name of the Lease")
    parser.add_argument("--leader-election-identity",
                        help=f"this replica's holderIdentity (default: ${POD_NAME_ENV} or the host name, "
                             "plus a unique suffix)")
    parser.add_argument("--lease-duration", type=float, default=15.0,
                        help="seconds a Lease not renewed stays its holder's")
    parser.add_argument("--renew-deadline", type=float, default=10.0,
                        help="seconds the leader keeps trying to renew before it stops operating (exits)")
    parser.add_argument("--retry-period", type=float, default=2.0,
                        help="seconds between renewals, and between a standby's attempts")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"wharf-operator {__version__}")
    args = parser.parse_args(argv)
    if not args.broker_image:
        args.broker_image = os.environ.get(BROKER_IMAGE_ENV, "").strip() or f"wharf:{__version__}"
    if not args.operator_namespace:
        args.operator_namespace = _pod_namespace()
    labels = {}
    for item in args.operator_pod_label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--operator-pod-label {item!r}: expected KEY=VALUE")
        labels[key] = value
    args.operator_pod_labels = labels
    if not args.allow_pod_network:
        args.allow_pod_network = [n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()]
    if args.leader_elect:
        if not args.leader_election_namespace:
            args.leader_election_namespace = _pod_namespace()
        if not args.leader_election_namespace:
            parser.error(f"--leader-elect needs --leader-election-namespace (or ${POD_NAMESPACE_ENV}) outside a pod")
        if not args.leader_election_identity:
            args.leader_election_identity = (f"{os.environ.get(POD_NAME_ENV) or socket.gethostname()}"
                                             f"_{uuid.uuid4()}")
        try:
            LeaseTiming(args.lease_duration, args.renew_deadline, args.retry_period)
        except ValueError as exc:
            parser.error(str(exc))
    return args


def _pod_namespace() -> str | None:
    """The namespace this operator runs in: $POD_NAMESPACE, else its ServiceAccount's (None outside a pod)."""
    return os.environ.get(POD_NAMESPACE_ENV) or _own_namespace()


def _own_namespace() -> str | None:
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


async def _serve_metrics(metrics: OperatorMetrics, host: str, port: int) -> web.AppRunner:
    async def handle(_: web.Request) -> web.Response:
        return web.Response(text=metrics.registry.exposition(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Format": "0.0.4"})

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def _serve_standby_health(url: str) -> web.AppRunner | None:
    """While standing by (kopf, which serves the liveness endpoint, is not started yet): answer it ourselves."""
    if not url:
        return None
    parsed = urllib.parse.urlparse(url)

    async def handle(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get(parsed.path or "/", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, parsed.hostname, parsed.port or 80).start()
    return runner


async def _lead(args: argparse.Namespace, creds: credentials.Credentials, stop: asyncio.Event
                ) -> LeaderElector | None:
    """Stand by until this replica holds the Lease; None if asked to stop first."""
    elector = LeaderElector(creds.api(), args.leader_election_namespace, args.leader_election_id,
                            args.leader_election_identity,
                            LeaseTiming(args.lease_duration, args.renew_deadline, args.retry_period))
    health = await _serve_standby_health(args.liveness)
    try:
        acquiring = asyncio.ensure_future(elector.acquire())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not acquiring.done():
            acquiring.cancel()
            await elector.api.close()
            return None
        stopping.cancel()
        return elector
    finally:
        if health is not None:
            await health.cleanup()


def _lost_leadership() -> None:
    """The Lease is someone else's (or could not be renewed): stop acting at once, as controller-runtime does; the
    Deployment starts this replica again as a standby."""
    log.critical("leader election lost: exiting")
    logging.shutdown()
    os._exit(1)


async def run(args: argparse.Namespace) -> None:
    creds = credentials.load(args.kubeconfig, args.context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    elector = await _lead(args, creds, stop) if args.leader_elect else None
    if args.leader_elect and elector is None:
        return  # stopped while standing by
    holding = asyncio.ensure_future(elector.hold(_lost_leadership)) if elector is not None else None
    if args.apply_crd:  # before any watch (and only by the leader): Helm never upgrades crds/ (crd_upgrade.py)
        await crd_upgrade.upgrade_at_start(creds.api())
    if args.network_policy and not (args.operator_namespace and args.operator_pod_labels):
        where = f"namespace {args.operator_namespace}" if args.operator_namespace else "each MQTTBroker's namespace"
        who = "the pods labelled " + ",".join(f"{k}={v}" for k, v in args.operator_pod_labels.items()) \
            if args.operator_pod_labels else "every pod"
        log.warning("the brokers' NetworkPolicies let %s in %s reach their admin API: pass --operator-namespace and "
                    "--operator-pod-label to name the operator's own pods", who, where)
    metrics = OperatorMetrics()
    controller = Controller(
        creds.api(),
        BrokerAdmin(args.allow_pod_network or ALL_NETWORKS, request_timeout=args.signal_timeout),
        OperatorConfig(recheck_interval=args.recheck_interval, reload_wait=args.reload_wait,
                       resync_interval=args.resync_interval, conflict_backoff=args.conflict_backoff,
                       broker_image=args.broker_image,
                       network_policy=args.network_policy, operator_namespace=args.operator_namespace,
                       operator_pod_labels=args.operator_pod_labels),
        metrics)
    registry = build_registry(controller, creds.connection_info())
    runner = await _serve_metrics(metrics, args.metrics_bind, args.metrics_port) if args.metrics_port else None
    try:
        await kopf.operator(
            registry=registry,
            # No kopf peering: its peers only pause each other (no Lease, no fencing); leader election is ours.
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness or None,
            stop_flag=stop,
        )
    finally:
        if runner is not None:
            await runner.cleanup()
        if holding is not None and elector is not None:
            holding.cancel()
            await elector.release()
            await elector.api.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if MISSING_MODULE:
        print(f"wharf-operator: the operator's dependencies are not installed (no module {MISSING_MODULE!r}): "
              f"{INSTALL_HINT}", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
