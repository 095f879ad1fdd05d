"""The bundled test PKI (etc/certs) and the script that regenerates it."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from wharf_broker.config.model import SslOptions
from wharf_broker.tls import validate_options
from wharf_broker.tls.material import read_snapshot, validate_snapshot

REPO = Path(__file__).resolve().parents[2]


def check_pki(directory: Path, min_years: float) -> None:
    for name in ("rootCA.crt", "rootCA.key", "server.crt", "server.key", "client.crt", "client.key"):
        assert (directory / name).is_file(), name
    for leaf in ("server.crt", "client.crt"):
        verified = subprocess.run(["openssl", "verify", "-CAfile", str(directory / "rootCA.crt"),
                                   str(directory / leaf)], capture_output=True, text=True)
        assert verified.returncode == 0, verified.stderr
    server = x509.load_pem_x509_certificate((directory / "server.crt").read_bytes())
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    left = server.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert left > dt.timedelta(days=365 * min_years)
    # What the broker itself checks at start: key matches, valid now, chain up to the CA.
    for cert, key in (("server.crt", "server.key"), ("client.crt", "client.key")):
        policy = validate_options(SslOptions(certfile=str(directory / cert), keyfile=str(directory / key),
                                             cacertfile=str(directory / "rootCA.crt")))
        material = validate_snapshot(policy, read_snapshot(policy))
        assert material.chain_verified and not material.warnings


def test_bundled_pki_is_usable_for_years():
    check_pki(REPO / "etc" / "certs", min_years=5)


def test_script_regenerates_a_pki(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen-test-pki.py"), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    check_pki(tmp_path, min_years=9)
    assert (tmp_path / "server.key").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("days", ["0", "-3"])
def test_script_refuses_nonsense(tmp_path, days):
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "gen-test-pki.py"), "--out", str(tmp_path),
                             "--days", days], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "days" in result.stderr
