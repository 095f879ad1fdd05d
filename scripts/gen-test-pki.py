#!/usr/bin/env python3
"""Regenerate the bundled test PKI in etc/certs (like EMQX's): for development and tests only.

    scripts/gen-test-pki.py [--out etc/certs] [--days 3650]

Writes rootCA.crt/key, server.crt/key (SANs localhost, 127.0.0.1, ::1; RSA so that RSA-PSK suites work too)
and client.crt/key (CN "client"). Everything short-lived, expired, revoked or deep is minted by the tests.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from broker.tls.devpki import CertificateAuthority  # noqa: E402


def write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, 0o600 if private else 0o644)
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "etc" / "certs"))
    parser.add_argument("--days", type=int, default=3650)
    args = parser.parse_args()
    if args.days < 1:
        parser.error("--days must be at least 1")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = CertificateAuthority("Wharf Test Root CA", days=args.days + 30, key_kind="rsa")
    server = root.issue("localhost", days=args.days, server=True, key_kind="rsa",
                        sans=["localhost", "127.0.0.1", "::1"])
    client = root.issue("client", days=args.days, client=True, key_kind="rsa")
    write(out / "rootCA.crt", root.cert_pem)
    # The bundled keys are test material and world-readable on purpose, as EMQX ships them.
    write(out / "rootCA.key", root.key_pem())
    write(out / "server.crt", server.cert_pem())
    write(out / "server.key", server.key_pem())
    write(out / "client.crt", client.cert_pem())
    write(out / "client.key", client.key_pem())
    print(f"wrote {out}: rootCA, server ({server.fingerprint}), client")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
