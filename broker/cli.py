"""``wharf-broker [--config FILE] [--check-config] [--log-level LEVEL]``

With no ``--config`` the broker runs its embedded default (``config/default.conf``), whose TLS listeners use a
local CA, server and client certificate that are generated on the first start and reused afterwards
(``tls/localpki.py``); ``--config FILE`` is the whole config, nothing is merged underneath it, and nothing is
generated. Exit status: 0 after a clean stop or a good ``--check-config``,
1 when the broker could not start, 2 for a bad config or bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .config.errors import ConfigError
from .config.loader import embedded_default, iter_listeners, load_file
from .logging_setup import setup_logging

EXIT_OK, EXIT_START_FAILED, EXIT_BAD_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wharf-broker", description="Wharf: an MQTT 3.1.1 / 5.0 broker.")
    parser.add_argument("--config", metavar="FILE",
                        help="HOCON config file (the whole config); default: the embedded default config")
    parser.add_argument("--check-config", action="store_true",
                        help="load and check the config, print a summary and exit")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="override log.level from the config")
    parser.add_argument("--version", action="version", version=f"wharf-broker {__version__}")
    return parser


def check_tls_material(config) -> list[str]:
    """What the TLS layer would refuse at start: bad options, unreadable or mismatched certificates and keys."""
    try:
        from .tls import TlsConfigError, validate_options
        from .tls.material import read_snapshot, validate_snapshot
    except ImportError:
        return []
    problems = []
    for kind, name, listener in iter_listeners(config):
        if kind not in ("ssl", "wss") or not listener.enable:
            continue
        try:
            policy = validate_options(listener.ssl_options, config.psk_authentication)
            validate_snapshot(policy, read_snapshot(policy))
        except TlsConfigError as exc:
            problems.append(f"listeners.{kind}.{name}.ssl_options: {exc}")
    return problems


def main(argv: list[str] | None = None) -> int:  # noqa: C901 - one branch per command-line mode
    args = build_parser().parse_args(argv)
    source = args.config or "the embedded default config"
    pki = None
    try:
        if args.config:
            config = load_file(args.config)
        else:
            from .tls import localpki

            try:
                # The embedded default's CA and certificates: made on the first start, then reused.
                pki = localpki.ensure()
            except localpki.LocalPkiError as exc:
                print(f"wharf-broker: {exc}", file=sys.stderr)
                return EXIT_START_FAILED
            config = embedded_default()
    except ConfigError as exc:
        print(f"wharf-broker: {source}: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if args.log_level:
        config.log.level = args.log_level
    if args.check_config:
        problems = check_tls_material(config)
        if problems:
            print(f"wharf-broker: {source}: TLS material would not load:", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            return EXIT_BAD_CONFIG
        enabled = [f"{kind}:{name} ({listener.bind})" for kind, name, listener in iter_listeners(config)
                   if listener.enable]
        print(f"config OK: {source}")
        print("listeners: " + (", ".join(enabled) if enabled else "none"))
        if config.dashboard.enable:
            print(f"admin api: {config.dashboard.listeners.http.bind}")
        if config.prometheus.enable:
            print(f"metrics (read-only, no token): {config.prometheus.bind}")
        if pki is not None:
            for _, line in pki.generated:
                print(line)
            print(pki.summary())
        return EXIT_OK

    setup_logging(config.log.level, config.log.format)
    if pki is not None:
        log = logging.getLogger("wharf")
        for why, line in pki.generated:
            # Made for the first time is expected; made again (expired, unusable) is worth a look.
            log.log(logging.INFO if why == "missing" else logging.WARNING, "%s", line)
        log.info("%s", pki.summary())
    from .app import StartupError, run

    try:
        return run(config)
    except StartupError as exc:
        logging.getLogger("wharf").error("%s", exc)
        return EXIT_START_FAILED
    except KeyboardInterrupt:  # a second ^C while stopping
        return EXIT_START_FAILED
    except Exception:
        logging.getLogger("wharf").exception("the broker failed")
        return EXIT_START_FAILED


if __name__ == "__main__":
    sys.exit(main())
