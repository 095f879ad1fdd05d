"""Run the benchmark: Wharf, mosquitto and amqtt side by side, interleaved, and print the table of medians.

    python -m bench                      # everything, 3 repetitions, 200k messages per rate run
    python -m bench --quick              # a smoke run: small counts, 1 repetition
    python -m bench --scenarios qos0,qos1 --brokers wharf,mosquitto --messages 100000 --repeats 5
    python -m bench --scenarios scale --brokers wharf,mosquitto --repeats 1 --run-timeout 300

Each repetition runs every scenario against every broker in turn (ABC, then BCA, CAB, ...), each broker
started fresh for each run, so that slow drifts of a shared machine spread over all brokers alike.
"""

from __future__ import annotations

if __package__ in (None, ""):  # ``python bench/run.py`` from the checkout
    import pathlib
    import sys as _sys
    _sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import argparse
import atexit
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench import processes, report
from bench.brokers import ALL_BROKERS, DEFAULT_AMQTT_VENV, Amqtt, Broker
from bench.pki import copy_pki, create_pki
from bench.scenarios import ScenarioError, Settings, all_scenarios

# Big enough that a rate run is not all process start-up, small enough for a smoke run of a few minutes.
QUICK = {"messages": 20_000, "repeats": 1, "latency_messages": 500, "connections": 200, "idle_connections": 200,
             "rotations": 2, "run_timeout": 20.0, "retained_sizes": "0,20000", "scale_steps": "500,1000"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    scenario_names = [s.name for s in all_scenarios()]
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="scenarios: " + ", ".join(scenario_names))
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts, one repetition")
    parser.add_argument("--brokers", default="wharf,mosquitto,amqtt",
                        help="comma-separated, from: " + ", ".join(ALL_BROKERS))
    parser.add_argument("--scenarios", default="all", help="comma-separated scenario names, or 'all'")
    parser.add_argument("--repeats", type=int, help="runs of each scenario per broker (default 3)")
    parser.add_argument("--messages", type=int, help="messages per rate run (default 200000)")
    parser.add_argument("--payload-size", type=int, default=64)
    parser.add_argument("--run-timeout", type=float, help="seconds before a run is cut short (default 60)")
    parser.add_argument("--latency-messages", type=int, help="messages per latency run (default 5000)")
    parser.add_argument("--latency-rate", type=float, default=1000.0, help="messages/s in latency runs")
    parser.add_argument("--connections", type=int, help="connections per connect-rate run (default 2000)")
    parser.add_argument("--idle-connections", type=int, help="connections held in memory runs (default 3000)")
    parser.add_argument("--connect-client", choices=("auto", "c", "python"), default="auto",
                        help="connect-rate client: the C one (built with cc and OpenSSL), the Python one, or C "
                             "when it builds (default)")
    parser.add_argument("--rotations", type=int, help="certificate rotations per rotation run (default 5)")
    parser.add_argument("--rotation-publishers", type=int, default=20)
    parser.add_argument("--retained-sizes",
                        help="retained messages at which the retained scenario times SUBSCRIBE, comma-separated "
                             "(default 0,100000,1000000; 1M takes a --run-timeout of a few minutes)")
    parser.add_argument("--retained-subscribes", type=int, default=500,
                        help="SUBSCRIBEs timed at each retained size (default %(default)s)")
    parser.add_argument("--scale-steps",
                        help="idle connections the scale scenario holds at each step, comma-separated (default "
                             "1000,5000,10000,19000; processes here may hold 20,000 open files)")
    parser.add_argument("--amqtt-venv", type=Path, default=DEFAULT_AMQTT_VENV,
                        help="virtualenv with amqtt installed (default %(default)s)")
    parser.add_argument("--install-amqtt", action="store_true",
                        help="create the amqtt virtualenv (--amqtt-venv) with pip, then exit")
    parser.add_argument("--json", type=Path, help="also write every run's values to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs, outputs)")
    args = parser.parse_args(argv)
    defaults = {"messages": 200_000, "repeats": 3, "latency_messages": 5_000, "connections": 2_000,
                    "idle_connections": 3_000, "rotations": 5, "run_timeout": 60.0,
                    "retained_sizes": "0,100000,1000000", "scale_steps": "1000,5000,10000,19000"}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, QUICK[key] if args.quick else value)
    for key in ("messages", "repeats", "latency_messages", "connections", "idle_connections", "rotations",
                "payload_size", "rotation_publishers", "retained_subscribes"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.latency_rate <= 0 or args.run_timeout <= 0:
        parser.error("--latency-rate and --run-timeout must be positive")
    try:
        args.retained_sizes = tuple(int(size) for size in args.retained_sizes.split(",") if size.strip())
    except ValueError:
        parser.error("--retained-sizes must be whole numbers separated by commas")
    if not args.retained_sizes or min(args.retained_sizes) < 0:
        parser.error("--retained-sizes must name at least one size, none negative")
    try:
        args.scale_steps = tuple(int(size) for size in args.scale_steps.split(",") if size.strip())
    except ValueError:
        parser.error("--scale-steps must be whole numbers separated by commas")
    if not args.scale_steps or min(args.scale_steps) < 1:
        parser.error("--scale-steps must name at least one count, all positive")
    args.broker_names = [b.strip() for b in args.brokers.split(",") if b.strip()]
    unknown = [b for b in args.broker_names if b not in ALL_BROKERS]
    if unknown or not args.broker_names:
        parser.error(f"unknown brokers {unknown}; choose from {', '.join(ALL_BROKERS)}")
    if args.scenarios == "all":
        args.scenario_names = scenario_names
    else:
        args.scenario_names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
        unknown = [s for s in args.scenario_names if s not in scenario_names]
        if unknown or not args.scenario_names:
            parser.error(f"unknown scenarios {unknown}; choose from {', '.join(scenario_names)}")
    return args


def run_order(items: list, repetition: int) -> list:
    """ABC, BCA, CAB, ...: no broker always runs first, or always right after the same neighbour."""
    shift = repetition % len(items) if items else 0
    return items[shift:] + items[:shift]


def _make_broker(name: str, args: argparse.Namespace) -> Broker:
    return Amqtt(args.amqtt_venv) if name == "amqtt" else ALL_BROKERS[name]()


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _summary(scenario, result) -> str:
    parts = []
    for metric in scenario.metrics:
        value = result.values.get(metric.key)
        if value is not None:
            parts.append(f"{metric.key}={value * metric.scale:.4g}{metric.unit and ' ' + metric.unit}")
    suffix = ""
    if not result.complete:
        suffix = f"  (incomplete: {result.note})"
    elif result.note:
        suffix = f"  ({result.note})"
    return ", ".join(parts) + suffix


def install_amqtt(venv: Path) -> int:
    """amqtt pins its own dependencies, so it gets a virtualenv of its own."""
    log(f"creating {venv} and installing amqtt into it")
    steps = [[sys.executable, "-m", "venv", str(venv)],
             [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "amqtt"]]
    for step in steps:
        if subprocess.run(step, check=False).returncode != 0:
            log(f"failed: {' '.join(step)}")
            return 1
    log(f"amqtt {Amqtt(venv).version()} is ready")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.install_amqtt:
        return install_amqtt(args.amqtt_venv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    atexit.register(processes.terminate_all)
    wanted = args.idle_connections * 2 + 1024
    if "scale" in args.scenario_names:
        wanted = max(wanted, max(args.scale_steps) + 1024)
    nofile = processes.raise_open_files_limit(wanted)
    if nofile < args.idle_connections + 256:
        log(f"warning: open files limit is {nofile}; memory runs with {args.idle_connections} connections may fail")
    if "scale" in args.scenario_names and nofile < max(args.scale_steps) + 200:
        log(f"warning: open files limit is {nofile}; the scale scenario's {max(args.scale_steps)} connections "
            "may not all fit in one broker process")

    scenarios = [s for s in all_scenarios() if s.name in args.scenario_names]
    brokers: list[Broker] = []
    versions: dict[str, str] = {}
    for name in args.broker_names:
        broker = _make_broker(name, args)
        reason = broker.unavailable_reason()
        if reason:
            log(f"skipping {name}: {reason}")
            continue
        brokers.append(broker)
        versions[name] = broker.version()
    if not brokers:
        log("no broker can run")
        return 2
    for tool in ("mosquitto_pub", "mosquitto_sub"):
        if not shutil.which(tool):
            log(f"{tool} is missing (Debian package 'mosquitto-clients')")
            return 2

    # tmpfs when there is one: subscriber outputs are written there at full speed.
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    workdir = Path(tempfile.mkdtemp(prefix="wharf-bench-", dir=base))
    settings = Settings(messages=args.messages, payload_size=args.payload_size, run_timeout=args.run_timeout,
                        latency_messages=args.latency_messages, latency_rate=args.latency_rate,
                        connections=args.connections, connect_client=args.connect_client,
                        idle_connections=args.idle_connections,
                        rotations=args.rotations, rotation_publishers=args.rotation_publishers,
                        retained_sizes=args.retained_sizes, retained_subscribes=args.retained_subscribes,
                        scale_steps=args.scale_steps,
                        workdir=workdir)
    for scenario in scenarios:
        scenario.configure(settings)
    outcomes: dict[tuple[str, str], report.Outcome] = {}
    broker_names = [b.name for b in brokers]
    started = time.monotonic()
    interrupted = False
    try:
        pki = create_pki(workdir / "pki")
        for repetition in range(args.repeats):
            for scenario in scenarios:
                for broker in run_order(brokers, repetition):
                    outcome = outcomes.setdefault((scenario.name, broker.name), report.Outcome())
                    reason = scenario.unsupported_reason(broker)
                    if reason:
                        outcome.skipped = reason
                        continue
                    rundir = workdir / f"r{repetition + 1}-{scenario.name}-{broker.name}"
                    rundir.mkdir()
                    run_pki = copy_pki(pki, rundir / "pki") if scenario.needs_own_pki else pki
                    label = f"[{repetition + 1}/{args.repeats}] {scenario.name:<14} {broker.name:<10}"
                    running = None
                    try:
                        running = broker.start(rundir, run_pki)
                        result = scenario.run(running, run_pki, settings, rundir)
                        outcome.results.append(result)
                        log(f"{label} {_summary(scenario, result)}")
                    except Exception as exc:  # noqa: BLE001 - one failed run must not end the benchmark
                        message = str(exc).strip().replace("\n", " | ")[:500]
                        if not isinstance(exc, (ScenarioError, RuntimeError, OSError)):
                            message = f"{type(exc).__name__}: {message}"
                        outcome.failures.append(message)
                        log(f"{label} FAILED: {message}")
                    finally:
                        if running:
                            running.stop()
                            if running.child.exit_code not in (0, -15, None) and not outcome.failures:
                                log(f"{label} note: {broker.name} exited with {running.child.exit_code}")
                        processes.terminate_all()
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted: stopping every process and printing what was measured")
    finally:
        processes.terminate_all()
        if args.keep:
            log(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    elapsed = time.monotonic() - started
    print(f"## Wharf benchmark ({'quick' if args.quick else 'full'} run, {args.repeats} repetition(s), "
          f"{elapsed:.0f} s{', interrupted' if interrupted else ''})\n")
    print("Machine: " + "; ".join(report.machine_description()))
    print("Brokers: " + "; ".join(f"{name} {version}" for name, version in versions.items()))
    print(f"Command: `{report.command_line()}`")
    print(f"Sizes: {settings.messages} messages of {settings.payload_size} bytes per rate run; latency "
          f"{settings.latency_messages} messages at {settings.latency_rate:g}/s; {settings.connections} connections "
          f"per connect-rate run; {settings.idle_connections} idle connections; {settings.rotations} rotations "
          f"under {settings.rotation_publishers} publishers × {settings.rotation_rate:g} msg/s\n")
    print(report.render_table(scenarios, broker_names, outcomes))
    print("\nMedians of the repetitions (losses and drops: the worst run); `*` = at least one run incomplete "
          "(see notes). Ratios are "
          "wharf ÷ peer: above 1 is better for rates, below 1 is better for CPU, latency and memory.\n")
    print(report.render_legend(scenarios))
    notes = report.render_notes(scenarios, broker_names, outcomes)
    if notes:
        print("\nNotes:\n" + notes)
    if args.json:
        args.json.write_text(json.dumps({
            "versions": versions, "machine": report.machine_description(), "command": report.command_line(),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
            "runs": {f"{s}/{b}": {"results": [asdict(r) for r in o.results], "failures": o.failures,
                                  "skipped": o.skipped} for (s, b), o in outcomes.items()},
        }, indent=2))
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
