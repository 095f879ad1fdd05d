"""The embedded default's generated PKI: made once, private, atomic, reused, made again only when unusable."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from wharf_broker import atomic_file
from wharf_broker.tls import localpki


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if not p.name.startswith(".")}


def test_first_start_makes_a_private_ca_server_and_client_certificate(tmp_path):
    pki = localpki.ensure(tmp_path / "state" / "certs", hostname="broker-host.example")
    assert sorted(snapshot(pki.directory)) == ["client.crt", "client.key", "rootCA.crt", "rootCA.key", "server.crt",
                                              "server.key"]
    assert [why for why, _ in pki.generated] == ["missing"] * 3
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    for key in ("rootCA.key", "server.key", "client.key"):
        assert stat.S_IMODE((pki.directory / key).stat().st_mode) == 0o600

    ca, server, client = load(pki.ca), load(pki.server[0]), load(pki.client[0])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    client.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "broker-host.example"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    assert client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
    now = dt.datetime.now(dt.timezone.utc)
    assert ca.not_valid_after_utc - now > dt.timedelta(days=3000)
    assert dt.timedelta(days=300) < server.not_valid_after_utc - now <= dt.timedelta(days=localpki.LEAF_DAYS)

    # Python's own (strict) verifier accepts the chain for each local name.
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(*map(str, pki.client))  # the client pair loads, key matches
    assert "trust the CA " + str(pki.ca) in pki.summary()


def test_next_start_reuses_everything(tmp_path):
    first = localpki.ensure(tmp_path)
    assert first.generated
    before = snapshot(tmp_path)
    second = localpki.ensure(tmp_path)
    assert second.generated == []
    assert snapshot(tmp_path) == before


def test_an_odd_host_name_is_left_out_of_the_sans(tmp_path):
    pki = localpki.ensure(tmp_path, hostname="not a_dns name!")
    sans = load(pki.server[0]).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]


def reissue_expired(pki: localpki.LocalPki, role: str) -> None:
    """Replace the role's certificate by an expired one from the same CA (and key)."""
    ca_cert = load(pki.ca)
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    cert_path, key_path = pki.server if role == "server" else pki.client
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    cert = (x509.CertificateBuilder().subject_name(ca_cert.subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(past - dt.timedelta(days=1)).not_valid_after(past).sign(ca_key, hashes.SHA256()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def test_an_expired_server_certificate_is_made_again_from_the_same_ca(tmp_path):
    pki = localpki.ensure(tmp_path)
    before = snapshot(tmp_path)
    reissue_expired(pki, "server")
    again = localpki.ensure(tmp_path)
    assert [text.split(" (")[0] for _, text in again.generated] == [f"generated a server certificate {pki.server[0]}"]
    assert again.generated[0][0].startswith("expired")
    after = snapshot(tmp_path)
    assert after["rootCA.crt"] == before["rootCA.crt"] and after["client.crt"] == before["client.crt"]
    assert after["server.key"] != before["server.key"]
    load(pki.server[0]).verify_directly_issued_by(load(pki.ca))


def test_an_expired_ca_is_made_again_with_new_leaves(tmp_path):
    pki = localpki.ensure(tmp_path)
    before = snapshot(tmp_path)
    ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
    old = load(pki.ca)
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=1)
    expired = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.subject)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(past - dt.timedelta(days=10)).not_valid_after(past)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .sign(ca_key, hashes.SHA256()))
    pki.ca.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    again = localpki.ensure(tmp_path)
    assert [text.split(" ")[2] for _, text in again.generated] == ["local", "server", "client"]
    after = snapshot(tmp_path)
    assert all(after[name] != before[name] for name in after)
    load(pki.server[0]).verify_directly_issued_by(load(pki.ca))
    load(pki.client[0]).verify_directly_issued_by(load(pki.ca))


def test_a_crash_between_key_and_certificate_is_repaired(tmp_path, monkeypatch):
    """The new key is in place, the certificate is not: the next start sees a mismatched pair and makes it again."""
    real_write = localpki.write_atomically

    def crash_on_certificates(path, data, mode):
        if path.suffix == ".crt" and path.name != "rootCA.crt":
            raise KeyboardInterrupt("power cut")
        real_write(path, data, mode)

    monkeypatch.setattr(localpki, "write_atomically", crash_on_certificates)
    with pytest.raises(KeyboardInterrupt):
        localpki.ensure(tmp_path)
    assert (tmp_path / "server.key").exists() and not (tmp_path / "server.crt").exists()
    monkeypatch.setattr(localpki, "write_atomically", real_write)
    pki = localpki.ensure(tmp_path)
    assert [why for why, _ in pki.generated] == ["missing", "missing"]  # server and client; the CA was kept
    ssl.create_default_context(cafile=str(pki.ca)).load_cert_chain(*map(str, pki.server))


def test_a_key_that_does_not_match_or_does_not_parse_is_made_again(tmp_path):
    pki = localpki.ensure(tmp_path)
    pki.server[1].write_bytes(pki.client[1].read_bytes())  # another key
    pki.client[1].write_bytes(pki.client[1].read_bytes()[:60])  # half a key
    (tmp_path / ".tmp-leftover").write_bytes(b"half")
    again = localpki.ensure(tmp_path)
    assert sorted(why for why, _ in again.generated) == ["the key does not match the certificate", "unreadable"]
    assert not (tmp_path / ".tmp-leftover").exists()
    for pair in (pki.server, pki.client):
        ssl.create_default_context(cafile=str(pki.ca)).load_cert_chain(*map(str, pair))


def test_a_leaf_from_another_ca_is_made_again(tmp_path):
    pki = localpki.ensure(tmp_path / "a")
    other = localpki.ensure(tmp_path / "b")
    for name in ("server.crt", "server.key"):
        (pki.directory / name).write_bytes((other.directory / name).read_bytes())
    again = localpki.ensure(tmp_path / "a")
    assert [why for why, _ in again.generated] == ["not issued by the current CA"]


CONCURRENT = """
import sys
from pathlib import Path
from wharf_broker.tls import localpki
sys.stdin.read(1)  # start together
pki = localpki.ensure(Path(sys.argv[1]))
print(len(pki.generated), pki.ca.read_bytes().hex(), pki.server[0].read_bytes().hex())
"""


def test_concurrent_first_starts_agree_on_one_ca(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT, str(tmp_path / "certs")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for proc in procs:
        proc.stdin.write("x")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(out.split())
    assert sorted(int(r[0]) for r in results) == [0, 0, 0, 3]  # one made everything, the others reused it
    assert len({(r[1], r[2]) for r in results}) == 1
    assert (tmp_path / "certs" / "rootCA.crt").read_bytes().hex() == results[0][1]


def test_an_unusable_state_directory_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(localpki.LocalPkiError, match="set WHARF_HOME to a writable directory"):
        localpki.ensure(blocker / "certs")


def test_an_existing_state_directory_keeps_its_mode(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    monkeypatch.setenv("WHARF_HOME", str(home))
    pki = localpki.ensure()
    assert pki.directory == home / "certs"
    assert stat.S_IMODE(home.stat().st_mode) == 0o755
    assert stat.S_IMODE(pki.directory.stat().st_mode) == 0o700
    assert os.listdir(home) == ["certs"]


def test_a_read_only_state_directory_still_serves_a_complete_pki(tmp_path, monkeypatch):
    """The lock file cannot be made (a read-only volume): a complete PKI is used as it is; a missing one is an
    error saying where."""
    import errno

    pki = localpki.ensure(tmp_path)
    (tmp_path / ".lock").unlink()
    real_open = os.open

    def read_only(path, flags, *args):
        if str(path).endswith(".lock") or flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(localpki.os, "open", read_only)
    monkeypatch.setattr(atomic_file.tempfile, "mkstemp", lambda **kw: read_only(kw["dir"] / "x", os.O_CREAT))
    assert localpki.ensure(tmp_path).generated == []
    pki.server[0].unlink()
    with pytest.raises(localpki.LocalPkiError, match=f"in {tmp_path}: Read-only file system"):
        localpki.ensure(tmp_path)
