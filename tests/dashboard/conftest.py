"""Fixtures for the Dashboard tests: a test PKI, a broker with a TLS listener, a real headless Chromium, and a
cookie-keeping HTTP client for the checks that need no browser.

Chromium and its driver come from Debian (``apt-get install chromium chromium-driver``); the browser tests are
skipped, with the reason, when they are not installed.
"""

from __future__ import annotations

import hashlib
import http.cookiejar
import os
import re
import shutil
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from wharf_broker.tls.devpki import CertificateAuthority, Issued

SCREENSHOTS = Path(__file__).with_name("screenshots")
DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"
TOKEN = "dashboard-test-token"
PASSWORD = "correct horse battery staple"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# MQTT 3.1.1 CONNECT: clean session, keep-alive 60, empty client id; and the CONNACK that accepts it.
MQTT_CONNECT = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"
MQTT_CONNACK_OK = b"\x20\x02\x00\x00"


@dataclass
class Pki:
    dir: Path
    ca: CertificateAuthority
    server: Issued
    client: Issued

    def write(self, name: str, data: bytes) -> Path:
        path = self.dir / name
        path.write_bytes(data)
        return path


@pytest.fixture
def pki(tmp_path) -> Pki:
    ca = CertificateAuthority("Dashboard Test CA")
    server = ca.issue("broker-before", server=True, sans=["localhost", "127.0.0.1"])
    client = ca.issue("device-42", client=True)
    folder = tmp_path / "pki"
    folder.mkdir()
    result = Pki(folder, ca, server, client)
    result.write("ca.crt", ca.cert_pem)
    result.write("server.crt", server.cert_pem())
    result.write("server.key", server.key_pem())
    result.write("client.crt", client.cert_pem())
    result.write("client.key", client.key_pem())
    return result


def broker_config(pki: Pki, upload_dir: Path, extra: str = "") -> str:
    return f"""
node.name = "wharf@dashboard-test"
listeners.tcp.default {{ bind = "127.0.0.1:0" }}
listeners.ssl.default {{
  bind = "127.0.0.1:0"
  max_connections = 512
  ssl_options {{
    certfile = "{pki.dir / 'server.crt'}"
    keyfile = "{pki.dir / 'server.key'}"
    cacertfile = "{pki.dir / 'ca.crt'}"
    verify = verify_none
  }}
}}
dashboard {{
  listeners.http.bind = "127.0.0.1:0"
  token = "{TOKEN}"
  default_username = "admin"
  default_password = "{PASSWORD}"
  upload_dir = "{upload_dir}"
  {extra}
}}
"""


@pytest.fixture
def dashboard_broker(broker_process, pki, tmp_path):
    """A broker with tcp:default and ssl:default (one-way TLS, CA configured) and the Dashboard."""
    return broker_process(broker_config(pki, tmp_path / "uploads"), token=TOKEN)


# -- TLS probes ---------------------------------------------------------------------------------------------


@dataclass
class TlsProbe:
    fingerprint: str  # SHA-256 of the certificate the server presented
    connected: bool  # the broker answered CONNECT with a CONNACK that accepts it
    detail: str


def tls_probe(port: int, pki: Pki, client: Issued | None = None) -> TlsProbe:
    """A real TLS handshake plus an MQTT CONNECT to the broker on ``port``."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.dir / "ca.crt"))
    if client is not None:
        cert = pki.write(f"probe-{uuid.uuid4().hex}.crt", client.cert_pem())
        key = pki.write(f"probe-{uuid.uuid4().hex}.key", client.key_pem())
        context.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                fingerprint = hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()
                try:
                    tls.sendall(MQTT_CONNECT)
                    answer = tls.recv(4)
                except (ssl.SSLError, OSError) as exc:  # TLS 1.3: a refused client learns it here
                    return TlsProbe(fingerprint, False, f"after handshake: {exc}")
                return TlsProbe(fingerprint, answer == MQTT_CONNACK_OK, f"answer {answer!r}")
        except ssl.SSLError as exc:
            return TlsProbe("", False, f"handshake: {exc}")


# -- plain HTTP with cookies --------------------------------------------------------------------------------


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class HttpSession:
    """A cookie-keeping client for the Dashboard (no browser), redirects not followed."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), NoRedirect)

    def request(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None):
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        try:
            with self.opener.open(request, timeout=15) as response:
                return response.status, dict(response.headers), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read().decode()

    def get(self, path: str):
        return self.request("GET", path)

    def post_form(self, path: str, fields: dict | list, headers: dict | None = None):
        body = urllib.parse.urlencode(fields, doseq=True).encode()
        return self.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded",
                                                 **(headers or {})})

    def post_multipart(self, path: str, fields: list[tuple[str, str]], files: dict[str, bytes]):
        boundary = uuid.uuid4().hex
        parts = []
        for name, value in fields:
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
        for name, data in files.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.pem"\r\n'
                         f"Content-Type: application/x-pem-file\r\n\r\n".encode() + data + b"\r\n")
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return self.request("POST", path, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    def cookie(self, name: str) -> str | None:
        return next((c.value for c in self.jar if c.name == name), None)

    def login(self, username: str = "admin", password: str = PASSWORD):
        status, _, page = self.get("/dashboard/login")
        assert status == 200, page
        token = csrf_of(page)
        return self.post_form("/dashboard/login", {"csrf": token, "username": username, "password": password})


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, f"no CSRF field in the page:\n{page[:2000]}"
    return match.group(1)


@pytest.fixture
def http_session(dashboard_broker):
    return HttpSession(dashboard_broker.admin_url)


# -- the browser --------------------------------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1440,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium", ignore_errors=True)


def screenshot(driver, name: str, *, also: Path | None = None) -> Path:
    """A full-page screenshot under ``tests/dashboard/screenshots/``.

    With ``WHARF_UPDATE_DOCS_IMAGES=1`` it is also copied to ``also`` (the README's picture), so that an ordinary
    test run leaves the checkout unchanged.
    """
    SCREENSHOTS.mkdir(exist_ok=True)
    height = driver.execute_script("return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)")
    driver.set_window_size(1440, max(760, min(int(height) + 160, 4000)))
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    driver.set_window_size(1440, 1000)
    if also is not None and os.environ.get("WHARF_UPDATE_DOCS_IMAGES") == "1":
        also.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, also)
    return path
