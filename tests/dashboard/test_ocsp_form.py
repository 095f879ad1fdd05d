"""OCSP stapling switched on through the Dashboard form, against a local OCSP responder; ``openssl s_client
-status`` proves the staple, the Certificates page shows its state."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from .test_http import DEFAULT_FIELDS, SSL_PAGE, csrf_of, logged_in


@pytest.fixture
def ocsp_responder(pki):
    """Answers GOOD for the server certificate, signed by the test CA, on 127.0.0.1 (ephemeral port)."""
    served = {pki.server.cert.serial_number: pki.server.cert}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            request = ocsp.load_der_ocsp_request(self.rfile.read(int(self.headers["Content-Length"])))
            now = dt.datetime.now(dt.timezone.utc)
            body = (ocsp.OCSPResponseBuilder().add_response(
                cert=served[request.serial_number], issuer=pki.ca.cert, algorithm=hashes.SHA1(),
                cert_status=ocsp.OCSPCertStatus.GOOD, this_update=now - dt.timedelta(minutes=1),
                next_update=now + dt.timedelta(hours=1), revocation_time=None, revocation_reason=None)
                .responder_id(ocsp.OCSPResponderEncoding.HASH, pki.ca.cert)
                .sign(pki.ca.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
            self.send_response(200)
            self.send_header("Content-Type", "application/ocsp-response")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ocsp"
    server.shutdown()
    server.server_close()


def test_ocsp_stapling_from_the_form(dashboard_broker, pki, ocsp_responder):
    session = logged_in(dashboard_broker)
    _, _, page = session.get(SSL_PAGE)
    fields = [f for f in DEFAULT_FIELDS if not f[0].startswith("ocsp_")] + [
        ("csrf", csrf_of(page)), ("enable_ocsp_stapling", "on"), ("ocsp_responder_url", ocsp_responder),
        ("ocsp_refresh_interval", "5m")]
    # Without the issuer the form says what is missing, next to the field.
    status, _, body = session.post_multipart(SSL_PAGE, fields, {})
    assert status == 400 and re.search(r'id="error-ocsp_issuer_pem"[^>]*>OCSP stapling needs the issuer', body)
    status, _, body = session.post_multipart(SSL_PAGE, fields, {"ocsp_issuer_pem": pki.ca.cert_pem})
    assert status == 303, body

    port = dashboard_broker.port("ssl:default")
    deadline = time.monotonic() + 20
    while True:
        result = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-status",
                                 "-CAfile", str(pki.dir / "ca.crt"), "-servername", "localhost"],
                                input=b"", capture_output=True, timeout=20)
        output = result.stdout.decode(errors="replace")
        if "OCSP Response Status: successful" in output or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "OCSP Response Status: successful" in output and "Cert Status: good" in output, output

    _, _, page = session.get("/dashboard/certificates")
    assert re.search(r"<dt>OCSP stapling</dt><dd>.*badge-good\">good</span>", page), page
    assert ocsp_responder in page
