"""The TLS compatibility components (``wharf_broker.tls.compat``): each one's check, and its plain path when the
check fails. A failure is simulated the way an upgrade would cause it (a private attribute or binding gone, the
shim's self-test failing); the listener must keep serving TLS, say so in a log line and in
``wharf_tls_compat_path``, and only PSK/OCSP listeners may refuse to start when pyOpenSSL lacks what they need.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from asyncio import sslproto

import pytest

from wharf_broker.config.model import PskAuthentication
from wharf_broker.metrics import Registry
from wharf_broker.tls import TlsConfigError, TlsListenerRuntime, compat
from wharf_broker.tls.compat import lean_sslproto, openssl_shim
from wharf_broker.tls.compat import pyopenssl as compat_pyopenssl
from wharf_tls_helpers import Echo, client_context, exchange, failures, options, serving

from tests.support import eventually


def compat_lines(registry: Registry) -> list[str]:
    return [line for line in registry.exposition().splitlines()
            if line.startswith(("wharf_tls_compat_path{", "wharf_tls_listener_backend{"))]


@pytest.fixture
def psk(files) -> PskAuthentication:
    return PskAuthentication(enable=True, init_file=files.write("init.psk", b"myclient1:secret\n"))


@pytest.fixture
def pyopenssl_without_psk_binding(monkeypatch):
    """pyOpenSSL as a release without ``SSL_CTX_set_psk_server_callback`` in its private bindings would be."""
    from OpenSSL import _util

    class Without:
        def __init__(self, lib) -> None:
            self._lib = lib

        def __getattr__(self, name: str):
            if name == "SSL_CTX_set_psk_server_callback":
                raise AttributeError(name)
            return getattr(self._lib, name)

    monkeypatch.setattr(_util, "lib", Without(_util.lib))
    compat_pyopenssl.forget()
    yield
    compat_pyopenssl.forget()


# -- the checks pass here ------------------------------------------------------------------------------------------

async def test_on_this_interpreter_every_component_runs_its_own_path(files):
    captured, registry = [], Registry()
    runtime = TlsListenerRuntime("ssl:test", options(files, verify="verify_none"), registry=registry)
    await runtime.start()
    server = await runtime.create_server(Echo, "127.0.0.1", 0,
                                         pre_tls=lambda factory: lambda: _keep(captured, factory()))
    try:
        result = await exchange(server.sockets[0].getsockname()[1], client_context(files))
        assert result.ok, result.error
        assert type(captured[0]) is lean_sslproto.LeanSSLProtocol
        lines = compat_lines(registry)
        assert 'wharf_tls_compat_path{component="openssl_shim",path="shim"} 1' in lines
        assert 'wharf_tls_compat_path{component="lean_sslproto",path="lean"} 1' in lines
        assert 'wharf_tls_listener_backend{listener="ssl:test",backend="stdlib"} 1' in lines
        assert compat.status()["openssl_shim"] == {"path": "shim", "fallback": False, "detail": "self-test passed"}
    finally:
        await runtime.stop()
    # A stopped listener no longer claims a backend.
    assert not [line for line in compat_lines(registry) if "wharf_tls_listener_backend" in line]


def _keep(captured: list, protocol):
    captured.append(protocol)
    return protocol


# -- openssl_shim ----------------------------------------------------------------------------------------------------

async def test_without_the_openssl_shim_plain_listeners_stay_on_the_stdlib_and_say_so(files, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="wharf.tls")
    monkeypatch.setattr(openssl_shim, "_run_self_test", lambda: (False, "ShimError: SSL_CTX pointer check failed"))
    monkeypatch.setattr(openssl_shim, "_probed", False)
    monkeypatch.setattr(openssl_shim, "_detected", None)
    registry = Registry()
    async with serving(options(files, verify="verify_none"), registry=registry) as rt:
        assert rt.backend == "stdlib"
        result = await exchange(rt.port, client_context(files))
        assert result.ok, result.error
        assert 'wharf_tls_compat_path{component="openssl_shim",path="none"} 1' in compat_lines(registry)
        assert compat.status()["openssl_shim"]["fallback"] is True
    assert any(r.levelno == logging.WARNING and "openssl_shim runs the none path" in r.getMessage()
               and "SSL_CTX pointer check failed" in r.getMessage() for r in caplog.records), caplog.text
    # A listener that needs depth enforced goes to pyOpenSSL, which has the setter, and still serves.
    async with serving(options(files, verify="verify_peer", fail_if_no_peer_cert=False)) as rt:
        assert rt.backend == "pyopenssl"
        assert (await exchange(rt.port, client_context(files))).ok


# -- lean_sslproto ---------------------------------------------------------------------------------------------------

@pytest.fixture
def asyncio_renamed_its_read_buffer(monkeypatch):
    """``SSLProtocol`` as if asyncio kept its read buffer under another private name: still a working class, but
    not the one ``LeanSSLProtocol`` was written against."""
    original = sslproto.SSLProtocol.buffer_updated

    def get_buffer(self, n):
        if not hasattr(self, "_read_view"):
            self._read_view = memoryview(bytearray(256 * 1024))
        return self._read_view

    def buffer_updated(self, nbytes):
        view = self._read_view  # AttributeError for an instance whose get_buffer was never asyncio's
        saved, self._ssl_buffer_view = self._ssl_buffer_view, memoryview(bytes(view[:nbytes]))
        try:
            original(self, nbytes)
        finally:
            self._ssl_buffer_view = saved

    monkeypatch.setattr(sslproto.SSLProtocol, "get_buffer", get_buffer)
    monkeypatch.setattr(sslproto.SSLProtocol, "buffer_updated", buffer_updated)


async def test_when_asyncio_sslprotocol_changed_listeners_use_asyncios_own_class(files, caplog,
                                                                                    asyncio_renamed_its_read_buffer):
    caplog.set_level(logging.INFO, logger="wharf.tls")
    captured, registry = [], Registry()
    runtime = TlsListenerRuntime("ssl:test", options(files, verify="verify_none"), registry=registry)
    await runtime.start()
    server = await runtime.create_server(Echo, "127.0.0.1", 0,
                                         pre_tls=lambda factory: lambda: _keep(captured, factory()))
    try:
        port = server.sockets[0].getsockname()[1]
        for payload in (b"first", b"second" * 300):
            result = await exchange(port, client_context(files), payload)
            assert result.ok and result.reply == payload + b"|-|-", result.error
        assert captured and all(type(p) is sslproto.SSLProtocol for p in captured)
        assert 'wharf_tls_compat_path{component="lean_sslproto",path="plain"} 1' in compat_lines(registry)
    finally:
        await runtime.stop()
    assert any(r.levelno == logging.WARNING and "lean_sslproto runs the plain path" in r.getMessage()
               for r in caplog.records), caplog.text


# -- pyOpenSSL's private bindings ------------------------------------------------------------------------------------

async def test_without_the_psk_binding_only_psk_listeners_refuse_to_start(files, psk, pki, caplog,
                                                                           pyopenssl_without_psk_binding):
    caplog.set_level(logging.INFO, logger="wharf.tls")
    runtime = TlsListenerRuntime("ssl:psk", options(files, versions=["tlsv1.2"]), psk=psk, registry=Registry())
    with pytest.raises(TlsConfigError) as refused:
        await runtime.start()
    message = str(refused.value)
    assert "PSK (psk_authentication) needs pyOpenSSL's private bindings" in message, message
    assert "SSL_CTX_set_psk_server_callback" in message, message
    assert any("pyopenssl runs the public path" in r.getMessage() for r in caplog.records), caplog.text
    # The same PSK configuration on a TLS 1.3-only listener (no PSK suites there) serves on the stdlib.
    async with serving(options(files, versions=["tlsv1.3"]), psk=psk) as rt:
        assert rt.backend == "stdlib"
        assert (await exchange(rt.port, client_context(files))).ok
    # pyOpenSSL listeners that need no private binding keep serving, with what the public API offers: a failed
    # client certificate counts as certificate_verify_failed rather than its precise reason.
    untrusted = pki.other_ca.issue("compat-untrusted", client=True)
    cert = files.issued_files("compat-untrusted", untrusted)
    registry = Registry()
    async with serving(options(files, verify="verify_peer", fail_if_no_peer_cert=True), backend="pyopenssl",
                       registry=registry) as rt:
        assert 'wharf_tls_compat_path{component="pyopenssl",path="public"} 1' in compat_lines(registry)
        good = await exchange(rt.port, client_context(files, (files.path("client.pem"), files.path("client.key"))))
        assert good.ok and good.reply == b"ping|client-good|-", good.error
        assert not (await exchange(rt.port, client_context(files, cert))).ok
        assert await eventually(lambda: failures(rt).get("certificate_verify_failed")), failures(rt)


async def test_with_the_private_bindings_psk_listeners_run(files, psk):
    compat_pyopenssl.forget()
    registry = Registry()
    async with serving(options(files, versions=["tlsv1.2"]), psk=psk, registry=registry) as rt:
        assert rt.backend == "pyopenssl"
        assert compat.status()["pyopenssl"]["path"] == "private"
        assert 'wharf_tls_compat_path{component="pyopenssl",path="private"} 1' in compat_lines(registry)
        assert 'wharf_tls_listener_backend{listener="ssl:test",backend="pyopenssl"} 1' in compat_lines(registry)
        # A live update that takes PSK away moves the listener to the stdlib, and the metric with it.
        await rt.update_options(options(files, versions=["tlsv1.3"]))
        assert rt.backend == "stdlib"
        backends = [line for line in compat_lines(registry) if line.startswith("wharf_tls_listener_backend")]
        assert backends == ['wharf_tls_listener_backend{listener="ssl:test",backend="stdlib"} 1']
        assert (await exchange(rt.port, client_context(files))).ok


# -- whole brokers, in a process of their own ------------------------------------------------------------------------

BROKER_SCRIPT = """
import asyncio, json, ssl, sys
{patch}
from wharf_broker.app import BrokerApp
from wharf_broker.config.loader import load_string
from wharf_broker.metrics import REGISTRY

CONNECT = bytes([0x10, 13, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 1]) + b"c"


async def run(config):
    app = BrokerApp(load_string(config))
    out = {{}}
    try:
        await app.start()
    except Exception as exc:
        out["error"] = str(exc)
    else:
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
        out["connack"] = {{}}
        for name, listener in app.listeners.items():
            port = int(listener.bind.rsplit(":", 1)[1])
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="localhost")
            writer.write(CONNECT)
            out["connack"][name] = (await reader.readexactly(4)).hex()
            writer.close()
        out["metrics"] = [line for line in REGISTRY.exposition().splitlines()
                          if line.startswith(("wharf_tls_compat_path{{", "wharf_tls_listener_backend{{"))]
    await app.stop()
    out["pyopenssl_modules"] = sorted(m for m in sys.modules if m == "OpenSSL" or m.startswith("OpenSSL."))
    return out


async def main():
    print(json.dumps([await run(config) for config in json.loads(sys.argv[1])]))

asyncio.run(main())
"""


def run_brokers(configs: list[str], patch: str = "", cwd=None) -> list[dict]:
    script = BROKER_SCRIPT.format(patch=textwrap.dedent(patch))
    result = subprocess.run([sys.executable, "-c", script, json.dumps(configs)], capture_output=True, text=True,
                            timeout=90, cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def tls_listener(files, name: str, extra: str = "") -> str:
    return f"""
listeners.ssl.{name} {{
  bind = "127.0.0.1:0"
  ssl_options {{
    certfile = "{files.path('server.pem')}"
    keyfile = "{files.path('server.key')}"
    cacertfile = "{files.path('ca.pem')}"
    verify = verify_none
    {extra}
  }}
}}
"""


NO_DASHBOARD = "dashboard.enable = false\n"


def test_a_broker_with_only_stdlib_tls_listeners_never_imports_pyopenssl(files, tmp_path):
    [run] = run_brokers([NO_DASHBOARD + tls_listener(files, "default")], cwd=tmp_path)
    assert run.get("error") is None, run
    assert run["connack"] == {"ssl:default": "20020000"}
    assert run["pyopenssl_modules"] == []
    assert 'wharf_tls_listener_backend{listener="ssl:default",backend="stdlib"} 1' in run["metrics"]
    assert 'wharf_tls_compat_path{component="openssl_shim",path="shim"} 1' in run["metrics"]
    assert 'wharf_tls_compat_path{component="lean_sslproto",path="lean"} 1' in run["metrics"]
    assert not [line for line in run["metrics"] if 'component="pyopenssl"' in line]


def test_without_pyopenssl_stdlib_listeners_serve_and_an_ocsp_listener_says_why_it_cannot(files, tmp_path):
    ocsp = f"""ocsp {{
      enable_ocsp_stapling = true
      responder_url = "http://127.0.0.1:9/ocsp"
      issuer_pem = "{files.path('ca.pem')}"
    }}"""
    plain, with_ocsp = run_brokers(
        [NO_DASHBOARD + tls_listener(files, "default"),
         NO_DASHBOARD + tls_listener(files, "default") + tls_listener(files, "stapled", ocsp)],
        patch='sys.modules["OpenSSL"] = None  # pyOpenSSL cannot be imported', cwd=tmp_path)
    assert plain["connack"] == {"ssl:default": "20020000"}, plain
    error = with_ocsp["error"]
    assert error.startswith("listener ssl:stapled: OCSP stapling (ocsp.enable_ocsp_stapling) needs the pyOpenSSL "
                            "backend, and pyOpenSSL cannot be imported here"), error


def test_without_pyopenssls_psk_binding_a_psk_listener_is_refused_by_name_and_others_serve(files, tmp_path):
    psk = f"""psk_authentication {{
  enable = true
  init_file = "{files.write('init.psk', b'myclient1:secret')}"
}}
"""
    modern = tls_listener(files, "modern", 'versions = ["tlsv1.3"]')
    legacy = tls_listener(files, "legacy", 'versions = ["tlsv1.2"]')
    patch = """
        from OpenSSL import _util

        class Without:
            def __init__(self, lib):
                self._lib = lib

            def __getattr__(self, name):
                if name == "SSL_CTX_set_psk_server_callback":
                    raise AttributeError(name)
                return getattr(self._lib, name)

        _util.lib = Without(_util.lib)
    """
    refused, served = run_brokers([NO_DASHBOARD + psk + modern + legacy, NO_DASHBOARD + psk + modern],
                                  patch=patch, cwd=tmp_path)
    assert refused["error"].startswith("listener ssl:legacy: PSK (psk_authentication) needs pyOpenSSL's private "
                                       "bindings"), refused
    assert "SSL_CTX_set_psk_server_callback" in refused["error"]
    assert served["connack"] == {"ssl:modern": "20020000"}, served
    assert 'wharf_tls_compat_path{component="pyopenssl",path="public"} 1' in served["metrics"]


def test_healthz_and_the_log_name_the_tls_backends(broker_process, files):
    broker = broker_process(tls_listener(files, "default") + 'dashboard.listeners.http.bind = "127.0.0.1:0"\n')
    status, body = broker.admin("GET", "/healthz", token=None)
    assert status == 200, body
    health = json.loads(body)
    assert health["tls"]["listeners"] == {"ssl:default": "stdlib"}
    assert health["tls"]["compat"]["openssl_shim"]["path"] == "shim"
    assert health["tls"]["compat"]["lean_sslproto"]["path"] == "lean"
    assert health["tls"]["compat"]["lean_sslproto"] == {"path": "lean", "fallback": False}
    assert "pyopenssl" not in health["tls"]["compat"]
    # The details (why a path was taken) are for authenticated callers, with the listener.
    status, body = broker.admin("GET", "/api/v5/listeners/ssl:default")
    assert status == 200, body
    described = json.loads(body)
    described = described.get("data", described)
    assert described["tls"]["compat"]["openssl_shim"]["detail"] == "self-test passed", described
    broker.wait_for_log(r"TLS compat: openssl_shim runs the shim path")
    broker.wait_for_log(r"TLS ssl:default: serving .*; stdlib backend")
