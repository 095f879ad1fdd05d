"""Certificate reload: atomic, validated, under load, and refused whole when the new material is bad."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import shutil
import ssl

import pytest

from wharf_broker.tls import TlsConfigError
from wharf_tls_helpers import client_context, exchange, options, serving

from tests.support import eventually

ROTATIONS = 3
OPEN_CONNECTIONS = 50


def install(files, issued, cert_name="server.pem", key_name="server.key") -> None:
    """Replace the served pair the way a careful tool does: write aside, then rename over."""
    for name, data in ((cert_name, issued.cert_pem()), (key_name, issued.key_pem())):
        tmp = files.root / (name + ".new")
        tmp.write_bytes(data)
        os.replace(tmp, files.root / name)


class Talker:
    """One long-lived TLS connection that keeps exchanging numbered messages until stopped."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.port, self.ctx = port, ctx
        self.exchanges = 0
        self.error: BaseException | None = None
        self.fingerprint = ""

    async def run(self, stop: asyncio.Event) -> None:
        import hashlib

        reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.ctx,
                                                       server_hostname="localhost")
        self.fingerprint = hashlib.sha256(writer.get_extra_info("ssl_object").getpeercert(True)).hexdigest()
        try:
            while not stop.is_set():
                message = b"m%d" % self.exchanges
                writer.write(message)
                reply = await asyncio.wait_for(reader.readexactly(len(message) + 4), 30)
                assert reply == message + b"|-|-", reply
                self.exchanges += 1
                await asyncio.sleep(0.02)
        except BaseException as exc:  # noqa: BLE001 - recorded and asserted on by the test
            self.error = exc
        finally:
            writer.close()


@pytest.mark.uvloop_too
@pytest.mark.parametrize("backend", ["stdlib", "pyopenssl"])
async def test_rotation_under_load_drops_nothing(files, backend):
    async with serving(options(files, reload_interval=3600), backend=backend) as rt:
        ctx = client_context(files)
        stop = asyncio.Event()
        talkers = [Talker(rt.port, ctx) for _ in range(OPEN_CONNECTIONS)]
        tasks = [asyncio.create_task(t.run(stop)) for t in talkers]
        await eventually(lambda: all(t.exchanges > 0 for t in talkers), timeout=60)
        served = [files.server.fingerprint]
        for round_number in range(ROTATIONS):
            issued = files.ca.issue(f"server-v{round_number + 2}", server=True, sans=["localhost"])
            install(files, issued)
            before = [t.exchanges for t in talkers]
            result = await rt.reload()
            assert result.reloaded and result.fingerprint == issued.fingerprint, result
            served.append(issued.fingerprint)
            for _ in range(3):
                fresh = await exchange(rt.port, ctx)
                assert fresh.ok and fresh.fingerprint == issued.fingerprint
            # Every old connection keeps talking after the swap.
            assert await eventually(lambda before=before: all(t.exchanges > b for t, b in zip(talkers, before)),
                                    timeout=60)
        stop.set()
        await asyncio.gather(*tasks)
        assert [t.error for t in talkers if t.error] == []
        assert {t.fingerprint for t in talkers} == {served[0]}
        status = rt.status()
        assert status["reloads_ok"] == ROTATIONS and status["fingerprint_sha256"] == served[-1]
        assert rt.metrics.reloads_ok.value == ROTATIONS


def _bad_material(files):
    now = dt.datetime.now(dt.timezone.utc)
    expired = files.ca.issue("server-expired", server=True, not_before=now - dt.timedelta(days=10),
                             not_after=now - dt.timedelta(days=1))
    other = files.ca.issue("server-other", server=True)
    good_pem = files.ca.issue("server-half", server=True).cert_pem()
    return {
        "expired": (expired.cert_pem(), expired.key_pem(), "not valid now"),
        "mismatched": (other.cert_pem(), files.server.key_pem(), "does not match"),
        "garbage": (b"this is not a certificate\n", files.server.key_pem(), "no PEM certificate"),
        "half-written": (good_pem[: len(good_pem) // 2], files.server.key_pem(), "no PEM certificate"),
        "empty key": (files.server.cert_pem(), b"", "keyfile: empty"),
        "bad chain": (other.cert_pem() + files.other_ca.cert_pem, other.key_pem(), "not issued by"),
    }


@pytest.mark.uvloop_too
@pytest.mark.parametrize("backend", ["stdlib", "pyopenssl"])
async def test_bad_material_is_refused_and_the_old_certificate_keeps_serving(files, caplog, backend):
    caplog.set_level(logging.ERROR, logger="wharf.tls")
    async with serving(options(files, reload_interval=3600), backend=backend) as rt:
        ctx = client_context(files)
        kept = await exchange(rt.port, ctx)
        reader, writer = await asyncio.open_connection("127.0.0.1", rt.port, ssl=ctx, server_hostname="localhost")
        for name, (cert, key, reason) in _bad_material(files).items():
            (files.root / "server.pem").write_bytes(cert)
            (files.root / "server.key").write_bytes(key)
            result = await rt.reload()
            assert not result.reloaded and reason in result.error, (name, result)
            assert result.fingerprint == files.server.fingerprint
            assert rt.status()["last_error"] == result.error
            after = await exchange(rt.port, ctx)
            assert after.ok and after.fingerprint == kept.fingerprint, name
        writer.write(b"still")
        assert await reader.readexactly(9) == b"still|-|-"
        writer.close()
        failed = len(_bad_material(files))
        assert rt.status()["reloads_failed"] == failed and rt.metrics.reloads_failed.value == failed
        # The same error again is not logged again.
        logged = len(caplog.records)
        assert (await rt.reload()).error
        assert len(caplog.records) == logged
        # Good material again: served, and the error is cleared.
        install(files, files.ca.issue("server-recovered", server=True, sans=["localhost"]))
        assert (await rt.reload()).reloaded and rt.status()["last_error"] is None


async def test_missing_file_at_reload_keeps_serving(files):
    async with serving(options(files, reload_interval=3600)) as rt:
        os.remove(files.root / "server.key")
        result = await rt.reload()
        assert not result.reloaded and "keyfile" in result.error
        assert (await exchange(rt.port, client_context(files))).ok


async def test_unchanged_files_are_not_reloaded(files):
    async with serving(options(files, reload_interval=3600)) as rt:
        # Rewriting identical bytes (new mtime, new inode) is not a change: content decides.
        shutil.copy(files.root / "server.pem", files.root / "copy.pem")
        os.replace(files.root / "copy.pem", files.root / "server.pem")
        result = await rt.reload()
        assert not result.reloaded and result.error is None
        assert rt.status()["reloads_ok"] == 0


def _secret_volume(root, issued, version: str):
    """Lay out files like a Kubernetes Secret volume: tls.crt -> ..data/tls.crt, ..data -> ..<version>."""
    data_dir = root / f"..{version}"
    data_dir.mkdir()
    (data_dir / "tls.crt").write_bytes(issued.cert_pem())
    (data_dir / "tls.key").write_bytes(issued.key_pem())
    link = root / "..data_tmp"
    os.symlink(data_dir.name, link)
    os.replace(link, root / "..data")  # the atomic flip the kubelet does


async def test_periodic_recheck_sees_a_kubernetes_secret_symlink_swap(files, tmp_path):
    volume = tmp_path / "secret"
    volume.mkdir()
    _secret_volume(volume, files.server, "2026_11_26_v1")
    for name in ("tls.crt", "tls.key"):
        os.symlink(f"..data/{name}", volume / name)
    opts = options(files, certfile=str(volume / "tls.crt"), keyfile=str(volume / "tls.key"), reload_interval=0.2)
    async with serving(opts) as rt:
        assert (await exchange(rt.port, client_context(files))).fingerprint == files.server.fingerprint
        rotated = files.ca.issue("server-rotated", server=True, sans=["localhost"])
        _secret_volume(volume, rotated, "2026_11_26_v2")
        assert await eventually(lambda: rt.status()["fingerprint_sha256"] == rotated.fingerprint, timeout=30)
        assert (await exchange(rt.port, client_context(files))).fingerprint == rotated.fingerprint


async def test_reload_waits_for_the_expected_fingerprint(files):
    async with serving(options(files, reload_interval=3600)) as rt:
        coming = files.ca.issue("server-expected", server=True, sans=["localhost"])

        async def write_later():
            await asyncio.sleep(0.5)
            install(files, coming)

        writer = asyncio.create_task(write_later())
        result = await rt.reload(expected_fingerprint=coming.fingerprint.upper(), timeout=30)
        await writer
        assert result.reloaded and result.fingerprint == coming.fingerprint and result.waited > 0
        never = await rt.reload(expected_fingerprint="ab" * 32, timeout=0.3)
        assert not never.reloaded and never.timed_out and never.fingerprint == coming.fingerprint


async def test_update_options_applies_live_or_not_at_all(files):
    async with serving(options(files, reload_interval=3600)) as rt:
        ctx = client_context(files)
        reader, writer = await asyncio.open_connection("127.0.0.1", rt.port, ssl=ctx, server_hostname="localhost")
        assert (await exchange(rt.port, ctx)).ok
        await rt.update_options(options(files, verify="verify_peer", fail_if_no_peer_cert=True))
        assert not (await exchange(rt.port, ctx)).ok  # no client certificate any more: refused
        with_cert = client_context(files, (files.path("client.pem"), files.path("client.key")))
        assert (await exchange(rt.port, with_cert)).reply == b"ping|client-good|-"
        # The connection made before the change is untouched.
        writer.write(b"old")
        assert await reader.readexactly(7) == b"old|-|-"
        # A bad update is refused whole: nothing changes.
        with pytest.raises(TlsConfigError, match="needs verify = verify_peer"):
            await rt.update_options(options(files, fail_if_no_peer_cert=True))
        with pytest.raises(TlsConfigError, match="keyfile"):
            await rt.update_options(options(files, keyfile=files.path("missing.key")))
        assert rt.options.verify == "verify_peer"
        assert (await exchange(rt.port, with_cert)).ok
        # A change fixed per listening socket (handshake timeout) rebinds the same port.
        port = rt.port
        await rt.update_options(options(files, verify="verify_none", handshake_timeout=5))
        assert (await exchange(port, ctx)).ok
        writer.write(b"old")
        assert await reader.readexactly(7) == b"old|-|-"
        writer.close()


async def test_start_refuses_bad_material_with_a_clear_error(files):
    (files.root / "server.key").write_bytes(files.ca.issue("x", server=True).key_pem())
    with pytest.raises(TlsConfigError, match="does not match"):
        async with serving(options(files)):
            pass


async def test_metrics_are_exposed(files):
    from wharf_broker.metrics import Registry
    from wharf_broker.tls import TlsListenerRuntime

    registry = Registry()
    rt = TlsListenerRuntime("ssl:metrics", options(files), registry=registry)
    await rt.start()
    try:
        text = registry.exposition()
        expiry = files.server.cert.not_valid_after_utc.timestamp()
        assert f'wharf_tls_certificate_expiry_timestamp_seconds{{listener="ssl:metrics"}} {int(expiry)}' in text
        (files.root / "server.pem").write_bytes(b"garbage")
        await rt.reload()
        assert 'wharf_tls_reloads_total{listener="ssl:metrics",result="failed"} 1' in registry.exposition()
    finally:
        await rt.stop()


@pytest.mark.parametrize("backend", ["stdlib", "pyopenssl"])
@pytest.mark.parametrize("tls", ["1.2", "1.3"])
async def test_sessions_do_not_survive_a_change_of_trusted_cas(files, backend, tls):
    from wharf_tls_helpers import tls_roundtrip

    version = ssl.TLSVersion.TLSv1_3 if tls == "1.3" else ssl.TLSVersion.TLSv1_2
    opts = options(files, verify="verify_peer", fail_if_no_peer_cert=True, reload_interval=3600)
    async with serving(opts, backend=backend) as rt:
        ctx = client_context(files, (files.path("client.pem"), files.path("client.key")), max_version=version)
        _, session, _ = await asyncio.to_thread(tls_roundtrip, rt.port, ctx)
        reply, session, reused = await asyncio.to_thread(tls_roundtrip, rt.port, ctx, session)
        assert reused and reply.startswith(b"ping"), "precondition: sessions resume"
        if backend == "stdlib":
            # A new server certificate under the same trust keeps sessions resumable.
            install(files, files.ca.issue("server-same-trust", server=True, sans=["localhost"]))
            assert (await rt.reload()).reloaded
            reply, session, reused = await asyncio.to_thread(tls_roundtrip, rt.port, ctx, session)
            assert reused and reply.startswith(b"ping")
        # The client's CA is no longer trusted: its old session must not let it in.
        files.write("ca.pem", files.new_ca.cert_pem)
        assert (await rt.reload()).reloaded
        try:
            reply, _, reused = await asyncio.to_thread(tls_roundtrip, rt.port, ctx, session)
        except (ssl.SSLError, OSError):
            reply, reused = b"", False
        assert reply == b"" and not reused
