"""``wharf-operator``: runs the MQTTBroker operator (kopf) against a cluster.

Credentials: in-cluster ServiceAccount when running in a pod, else ``--kubeconfig`` or KUBECONFIG (or
~/.kube/config). Scope: every namespace by default, or only the ``--namespace`` values given (the RBAC can then
be a Role per namespace). Serves a liveness endpoint (kopf's) and Prometheus metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

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
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] not in EXTRA_MODULES:
        raise
    MISSING_MODULE: str | None = exc.name
else:
    MISSING_MODULE = None

# Networks the operator may call pods in, when --allow-pod-network is not given. The test suite sets it to
# 127.0.0.0/8 for every process it starts, so no test can ever reach a real address.
ALLOW_ENV = "WHARF_OPERATOR_ALLOW_POD_NETWORKS"


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
    parser.add_argument("--apply-crd", action="store_true",
                        help="at start, upgrade the installed MQTTBroker CRD by server-side apply when its schema "
                             "revision is older than this operator's (needs get and patch on that CRD)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"wharf-operator {__version__}")
    args = parser.parse_args(argv)
    if not args.allow_pod_network:
        args.allow_pod_network = [n.strip() for n in os.environ.get(ALLOW_ENV, "").split(",") if n.strip()]
    return args


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


async def run(args: argparse.Namespace) -> None:
    creds = credentials.load(args.kubeconfig, args.context)
    if args.apply_crd:  # before any watch: Helm never upgrades crds/ (crd_upgrade.py)
        await crd_upgrade.upgrade_at_start(creds.api())
    metrics = OperatorMetrics()
    controller = Controller(
        creds.api(),
        BrokerAdmin(args.allow_pod_network or ALL_NETWORKS, request_timeout=args.signal_timeout),
        OperatorConfig(recheck_interval=args.recheck_interval, reload_wait=args.reload_wait,
                       resync_interval=args.resync_interval, conflict_backoff=args.conflict_backoff),
        metrics)
    registry = build_registry(controller, creds.connection_info())
    runner = await _serve_metrics(metrics, args.metrics_bind, args.metrics_port) if args.metrics_port else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,  # one operator replica; no peering objects needed (nor RBAC for them)
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness or None,
            stop_flag=stop,
        )
    finally:
        if runner is not None:
            await runner.cleanup()


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
