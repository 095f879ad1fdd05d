"""A refused certificate is never served: the broker runs the operator's checks before every swap and at start.

Bad material (an untrusted chain, a key of another certificate, not yet valid, expired) swapped into the files is
refused on every path (an explicit reload, the periodic re-check, SIGHUP, the admin API); the certificate served
before keeps being served (the serial a real TLS client sees does not change) and the refusal is counted by
reason. A broker restarted with such files serves the last accepted certificate (kept beside the durable store),
or, with none kept, does not listen on that listener and is not ready, with the reason, until the files are valid.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from cryptography import x509

from wharf_broker.metrics import Registry
from wharf_broker.tls import TlsConfigError, TlsListenerRuntime
from wharf_broker.tls import validation
from wharf_operator import certs
from wharf_tls_helpers import Echo, client_context, exchange, options

from tests.support import eventually, wait_until


def _cases(files) -> dict[str, tuple[bytes, bytes, str]]:
    """name -> (certfile bytes, keyfile bytes, the reason both gates give)."""
    now = dt.datetime.now(dt.timezone.utc)
    untrusted = files.other_ca.issue("server-untrusted", server=True, sans=["localhost"])
    other = files.ca.issue("server-other", server=True, sans=["localhost"])
    future = files.ca.issue("server-future", server=True, sans=["localhost"], not_before=now + dt.timedelta(days=1),
                            not_after=now + dt.timedelta(days=30))
    expired = files.ca.issue("server-expired", server=True, sans=["localhost"], not_before=now - dt.timedelta(days=9),
                             not_after=now - dt.timedelta(days=1))
    return {
        "bad chain": (untrusted.cert_pem(), untrusted.key_pem(), validation.UNTRUSTED),
        "key mismatch": (other.cert_pem(), files.server.key_pem(), validation.KEY_MISMATCH),
        "not yet valid": (future.cert_pem(), future.key_pem(), validation.NOT_YET_VALID),
        "expired": (expired.cert_pem(), expired.key_pem(), validation.EXPIRED),
    }


def _serial_of(der: bytes) -> str:
    return format(x509.load_der_x509_certificate(der).serial_number, "x")


def served_serial(port: int) -> str:
    """The serial of the certificate a real TLS client is handed (no verification: we look at what is served)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            return _serial_of(tls.getpeercert(binary_form=True))


def _install(files, cert_pem: bytes, key_pem: bytes) -> None:
    for name, data in (("server.pem", cert_pem), ("server.key", key_pem)):
        tmp = files.root / (name + ".new")
        tmp.write_bytes(data)
        os.replace(tmp, files.root / name)


def _refused(runtime: TlsListenerRuntime) -> dict[str, float]:
    return {labels["reason"]: value for labels, value in runtime.metrics.refused.samples()
            if labels["listener"] == runtime.listener_id}


def test_both_gates_give_the_same_verdict(files):
    issuer = files.ca.cert_pem
    for name, (cert_pem, key_pem, reason) in _cases(files).items():
        with pytest.raises(certs.InvalidMaterial) as operator_verdict:
            certs.validate(cert_pem, key_pem, issuer)
        with pytest.raises(validation.MaterialRefused) as broker_verdict:
            validation.check_server_material(cert_pem, key_pem, issuer, names=("certfile", "keyfile", "CAs"))
        assert operator_verdict.value.reason == broker_verdict.value.reason == reason, name
    assert certs.validate(files.server.cert_pem(), files.server.key_pem(), issuer).chain_checked


@pytest.mark.parametrize("backend", ["stdlib", "pyopenssl"])
async def test_a_refused_swap_keeps_the_old_certificate_on_every_path(files, backend, tmp_path):
    issuer = files.write("issuer.pem", files.ca.cert_pem)
    opts = options(files, server_cacertfile=issuer, reload_interval=0.2)
    runtime = TlsListenerRuntime("ssl:gate", opts, registry=Registry(), backend=backend, accepted_dir=tmp_path / "kept")
    await runtime.start()
    server = await runtime.create_server(Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ctx = client_context(files)
        first = _serial(files.server)
        assert await _served(port) == first
        for number, (name, (cert_pem, key_pem, reason)) in enumerate(_cases(files).items(), 1):
            _install(files, cert_pem, key_pem)
            # The periodic re-check (every 0.2 s here) refuses it ...
            assert await eventually(lambda reason=reason: _refused(runtime).get(reason, 0) >= 1, timeout=20), name
            # ... and so does an explicit reload (what SIGHUP and the admin API call).
            result = await runtime.reload()
            assert not result.reloaded and result.fingerprint == files.server.fingerprint, (name, result)
            assert await _served(port) == first, name
            assert (await exchange(port, ctx)).ok, name
            status = runtime.status()
            assert status["serial"] == first and status["last_refusal"]["reason"] == reason, (name, status)
            assert len(_refused(runtime)) == number
        # The refused material was never kept as the last accepted.
        kept = json.loads((tmp_path / "kept" / "ssl_gate.json").read_text())
        assert kept["fingerprint"] == files.server.fingerprint
        # Good material again: served, and kept.
        renewed = files.ca.issue("server-renewed", server=True, sans=["localhost"])
        _install(files, renewed.cert_pem(), renewed.key_pem())
        assert (await runtime.reload()).reloaded
        assert await _served(port) == _serial(renewed)
        assert json.loads((tmp_path / "kept" / "ssl_gate.json").read_text())["fingerprint"] == renewed.fingerprint
    finally:
        await runtime.stop()


async def _served(port: int) -> str:
    return await asyncio.to_thread(served_serial, port)


def _serial(issued) -> str:
    return format(issued.cert.serial_number, "x")


async def test_without_server_cacertfile_another_issuer_is_only_a_warning(files):
    # cacertfile names the CAs of clients; whoever issued the server certificate is not its business.
    untrusted = files.other_ca.issue("server-elsewhere", server=True, sans=["localhost"])
    _install(files, untrusted.cert_pem(), untrusted.key_pem())
    runtime = TlsListenerRuntime("ssl:plain", options(files), registry=Registry())
    await runtime.start()
    try:
        status = runtime.status()
        assert status["fingerprint_sha256"] == untrusted.fingerprint
        assert "certfile: the served chain does not lead up to a CA in cacertfile" in status["warnings"]
    finally:
        await runtime.stop()


async def test_a_missing_server_cacertfile_leaves_cacertfile_as_the_anchors(files, tmp_path):
    # A Secret without ca.crt: the operator checks against the listener's CA bundle only, and so does the broker.
    opts = options(files, server_cacertfile=str(tmp_path / "absent" / "ca.crt"))
    runtime = TlsListenerRuntime("ssl:noca", opts, registry=Registry())
    await runtime.start()
    try:
        assert runtime.status()["chain_verified_by_cacertfile"] is True
        untrusted = files.other_ca.issue("server-elsewhere", server=True, sans=["localhost"])
        _install(files, untrusted.cert_pem(), untrusted.key_pem())
        result = await runtime.reload()
        assert not result.reloaded and "does not chain to server_cacertfile or cacertfile" in result.error, result
        assert _refused(runtime) == {validation.UNTRUSTED: 1}
        with pytest.raises(certs.InvalidMaterial) as operator_verdict:
            certs.validate(untrusted.cert_pem(), untrusted.key_pem(), files.ca.cert_pem)
        assert operator_verdict.value.reason == validation.UNTRUSTED
    finally:
        await runtime.stop()


async def test_a_start_with_refused_files_serves_the_last_accepted(files, tmp_path):
    kept_dir = tmp_path / "kept"
    opts = options(files, server_cacertfile=files.write("issuer.pem", files.ca.cert_pem))
    first = TlsListenerRuntime("ssl:gate", opts, registry=Registry(), accepted_dir=kept_dir)
    await first.start()
    await first.stop()
    record = kept_dir / "ssl_gate.json"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600 and stat.S_IMODE(kept_dir.stat().st_mode) == 0o700
    cert_pem, key_pem, _ = _cases(files)["key mismatch"]
    _install(files, cert_pem, key_pem)
    restarted = TlsListenerRuntime("ssl:gate", opts, registry=Registry(), accepted_dir=kept_dir)
    await restarted.start()
    server = await restarted.create_server(Echo, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        assert (await exchange(port, client_context(files))).fingerprint == files.server.fingerprint
        status = restarted.status()
        assert status["serving_last_accepted"] is True and status["last_refusal"]["reason"] == "KeyMismatch"
        assert _refused(restarted) == {"KeyMismatch": 1}
    finally:
        await restarted.stop()
    # Nothing kept: the listener does not start, and the error says why.
    with pytest.raises(TlsConfigError, match="does not match"):
        await TlsListenerRuntime("ssl:gate", opts, registry=Registry(), accepted_dir=tmp_path / "empty").start()


def _broker_config(files, data_dir, reload_interval: str = "3600s") -> str:
    durable = (f'durable_storage {{\n  enable = true\n  data_dir = "{data_dir}"\n}}\n' if data_dir else "")
    return f"""
node.name = "gate@127.0.0.1"
listeners.tcp.default.enable = false
listeners.ssl.default {{
  bind = "127.0.0.1:0"
  ssl_options {{
    certfile = "{files.path('server.pem')}"
    keyfile = "{files.path('server.key')}"
    cacertfile = "{files.path('ca.pem')}"
    server_cacertfile = "{files.path('issuer.pem')}"
    reload_interval = {reload_interval}
  }}
}}
dashboard.listeners.http.bind = "127.0.0.1:0"
{durable}"""


def _tls_status(broker) -> dict:
    status, body = broker.admin("GET", "/api/v5/listeners/ssl:default")
    assert status == 200, body
    described = json.loads(body)
    return described.get("data", described)["tls"]





def test_a_broker_restarted_with_a_refused_certificate_serves_the_last_accepted(broker_process, files, tmp_path):
    files.write("issuer.pem", files.ca.cert_pem)
    config = _broker_config(files, tmp_path / "durable")
    broker = broker_process(config)
    first = served_serial(broker.ports["ssl:default"])
    assert first == _serial(files.server)
    assert broker.stop() == 0
    for cert_pem, key_pem, reason in _cases(files).values():
        _install(files, cert_pem, key_pem)
        broker = broker_process(config)
        port = broker.ports["ssl:default"]
        assert served_serial(port) == first, reason
        broker.wait_for_log(r"serving the last accepted certificate")
        status, body = broker.admin("GET", "/readyz", token=None)
        assert status == 200, body
        # SIGHUP and the admin API's reload refuse it too.
        mark = len(broker.log)
        broker.proc.send_signal(signal.SIGHUP)
        broker.wait_for_log(r"SIGHUP: reloading certificates", start=mark)
        assert wait_until(lambda broker=broker: _tls_status(broker)["reloads_failed"] >= 1, timeout=20.0), \
            _tls_status(broker)
        assert served_serial(port) == first, reason
        status, body = broker.admin("POST", "/api/v5/listeners/ssl:default/reload", b"{}")
        assert status == 422 and b"INVALID_CERTIFICATE" in body, body
        assert served_serial(port) == first, reason
        tls = _tls_status(broker)
        assert tls["reloads_failed"] == 2 and tls["serial"] == first, tls
        assert tls["serving_last_accepted"] is True and tls["last_refusal"]["reason"] == reason, tls
        status, metrics = broker.admin("GET", "/metrics")
        line = f'wharf_tls_material_refused_total{{listener="ssl:default",reason="{reason}"}}'
        assert line in metrics.decode(), metrics.decode()[-2000:]
        assert broker.stop() == 0


def _readyz(admin_url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(admin_url + "/readyz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize("recheck", ["admin API reload", "periodic re-check"])
def test_a_broker_with_a_refused_certificate_and_none_kept_is_not_ready_until_valid_files(files, tmp_path, recheck):
    files.write("issuer.pem", files.ca.cert_pem)
    cert_pem, key_pem, _ = _cases(files)["bad chain"]
    _install(files, cert_pem, key_pem)
    config = tmp_path / "broker.conf"
    config.write_text(_broker_config(files, None, "1s" if recheck == "periodic re-check" else "3600s"))
    log_path = tmp_path / "broker.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "wharf_broker", "--config", str(config)], stdout=log_file,
                                stderr=subprocess.STDOUT, cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert wait_until(lambda: re.search(r"broker \S+ ready", log_path.read_text()) or proc.poll() is not None,
                          timeout=20.0)
        text = log_path.read_text()
        assert proc.poll() is None, text
        assert re.search(r"listener ssl:default not started: .*does not chain to", text), text
        assert "listener ssl:default on" not in text  # never listened, so never served the refused certificate
        admin = re.search(r"admin api on (?P<host>[^\s:]+):(?P<port>\d+)", text)
        admin_url = f"http://{admin['host']}:{admin['port']}"
        status, body = _readyz(admin_url)
        assert status == 503 and body["listeners_down"] == ["ssl:default"], body
        assert body["reasons"] == {"ssl:default": validation.UNTRUSTED}, body
        # Valid files and a reload (what the operator's signal does): the listener starts and serves them.
        renewed = files.ca.issue("server-fixed", server=True, sans=["localhost"])
        _install(files, renewed.cert_pem(), renewed.key_pem())
        if recheck == "admin API reload":
            request = urllib.request.Request(admin_url + "/api/v5/listeners/ssl:default/reload", data=b"{}",
                                             method="POST", headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=10) as response:
                assert json.loads(response.read())["fingerprint"] == renewed.fingerprint
            assert _readyz(admin_url)[0] == 200
        else:
            assert wait_until(lambda: _readyz(admin_url)[0] == 200, timeout=20.0), _readyz(admin_url)
        port = int(re.search(r"listener ssl:default on 127\.0\.0\.1:(\d+)", log_path.read_text())[1])
        assert served_serial(port) == _serial(renewed)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log_path.read_text()
