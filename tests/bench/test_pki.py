"""The bench PKI, checked with real TLS 1.3 handshakes on 127.0.0.1."""

import socket
import ssl
import threading

import pytest

from bench import net
from bench.pki import copy_pki, create_pki, fingerprint_of_der, rotate_server_certificate, server_fingerprint


def _serve_once(pki, *, require_client_cert: bool):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(pki.server_cert), str(pki.server_key))
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(pki.ca_cert))
    listener = socket.create_server((net.HOST, 0))
    outcome = {}

    def serve():
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                outcome["peer"] = tls.getpeercert()
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            outcome["error"] = exc
        finally:
            listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener.getsockname()[1], thread, outcome


def _handshake(port, client_ctx):
    with socket.create_connection((net.HOST, port), timeout=10) as raw, \
            client_ctx.wrap_socket(raw, server_hostname=net.HOST) as tls:
        assert tls.version() == "TLSv1.3"
        assert tls.recv(2) == b"ok"
        return fingerprint_of_der(tls.getpeercert(binary_form=True))


def test_mutual_tls_handshake_with_the_generated_material(tmp_path):
    pki = create_pki(tmp_path / "pki")
    port, thread, outcome = _serve_once(pki, require_client_cert=True)
    served = _handshake(port, net.client_tls_context(pki, mutual=True))
    thread.join(10)
    assert "error" not in outcome
    assert dict(x[0] for x in outcome["peer"]["subject"])["commonName"] == "bench-client"
    assert served == server_fingerprint(pki)
    assert oct(pki.server_key.stat().st_mode & 0o777) == "0o600"


def test_rotation_issues_a_new_certificate_that_clients_still_trust(tmp_path):
    pki = copy_pki(create_pki(tmp_path / "pki"), tmp_path / "run")
    old = server_fingerprint(pki)
    new = rotate_server_certificate(pki)
    assert new != old and new == server_fingerprint(pki)
    port, thread, _outcome = _serve_once(pki, require_client_cert=False)
    assert _handshake(port, net.client_tls_context(pki, mutual=False)) == new
    thread.join(10)


def test_a_client_without_certificate_is_refused_by_a_mutual_server(tmp_path):
    pki = create_pki(tmp_path / "pki")
    port, thread, outcome = _serve_once(pki, require_client_cert=True)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(port, net.client_tls_context(pki, mutual=False))
    thread.join(10)
    assert "error" in outcome
