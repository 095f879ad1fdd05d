"""What the stdlib ``ssl`` module lacks (verify depth, TLS 1.3 suites, session cache control), via ctypes.

Python 3.11 has no API for ``SSL_CTX_set_verify_depth``, ``SSL_CTX_set_ciphersuites``, the server session
cache mode, or forgetting sessions and ticket keys. They are plain calls on the context's ``SSL_CTX*``, which
sits right after the object header of an ``ssl.SSLContext`` (CPython-internal layout). A wrong guess there would
crash the process, so the shim is only switched on after a self-test has passed **in a child process**
(``python openssl_shim.py --self-test``): it checks the pointer against ``SSL_CTX_get_options``, reads every
setter back and proves the TLS 1.3 suite choice with a real in-memory handshake. Every later use re-checks the
pointer the same cheap way first.

Without the shim (``wharf_tls_compat_path{component="openssl_shim",path="none"}``, and a warning naming why) the
stdlib backend still serves listeners that need neither depth nor TLS 1.3 suites; listeners that need them
enforced use the pyOpenSSL backend instead (its public API has both setters).

This module has no package-relative imports so that it can run as the self-test script.
"""

from __future__ import annotations

import ctypes
import ssl
import subprocess
import sys

SSL_CTRL_SET_TLSEXT_TICKET_KEYS = 59
TICKET_KEYS_LENGTH = 80  # key name 16 + HMAC secret 32 + AES key 32
SSL_CTRL_SET_SESS_CACHE_MODE = 44
SSL_CTRL_GET_SESS_CACHE_MODE = 45
SSL_SESS_CACHE_OFF = 0x0
SSL_SESS_CACHE_SERVER = 0x2
# OpenSSL's default TLS 1.3 suites, restored when a policy stops naming any.
DEFAULT_TLS13_SUITES = "TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"


class ShimError(RuntimeError):
    pass


class OpenSslShim:
    def __init__(self) -> None:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)  # dlsym on _ssl's handle also finds the libssl it links
        self._get_options = lib.SSL_CTX_get_options
        self._get_options.restype, self._get_options.argtypes = ctypes.c_uint64, [ctypes.c_void_p]
        self._set_depth = lib.SSL_CTX_set_verify_depth
        self._set_depth.restype, self._set_depth.argtypes = None, [ctypes.c_void_p, ctypes.c_int]
        self._get_depth = lib.SSL_CTX_get_verify_depth
        self._get_depth.restype, self._get_depth.argtypes = ctypes.c_int, [ctypes.c_void_p]
        self._set_suites = lib.SSL_CTX_set_ciphersuites
        self._set_suites.restype, self._set_suites.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]
        self._flush = lib.SSL_CTX_flush_sessions
        self._flush.restype, self._flush.argtypes = None, [ctypes.c_void_p, ctypes.c_long]
        self._ctrl = lib.SSL_CTX_ctrl
        self._ctrl.restype = ctypes.c_long
        self._ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]

    def _pointer(self, ctx: ssl.SSLContext) -> int:
        if type(ctx).__basicsize__ <= object.__basicsize__:  # pragma: no cover - layout changed
            raise ShimError("ssl.SSLContext layout is not the expected one")
        pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        if not pointer or self._get_options(pointer) != ctx.options:
            raise ShimError("SSL_CTX pointer check failed")
        return pointer

    def set_verify_depth(self, ctx: ssl.SSLContext, depth: int) -> None:
        pointer = self._pointer(ctx)
        self._set_depth(pointer, depth)
        if self._get_depth(pointer) != depth:
            raise ShimError("SSL_CTX_set_verify_depth did not take")

    def get_verify_depth(self, ctx: ssl.SSLContext) -> int:
        return self._get_depth(self._pointer(ctx))

    def set_tls13_suites(self, ctx: ssl.SSLContext, suites: str) -> None:
        if self._set_suites(self._pointer(ctx), (suites or DEFAULT_TLS13_SUITES).encode()) != 1:
            raise ShimError(f"OpenSSL refused the TLS 1.3 suites {suites!r}")

    def set_session_cache(self, ctx: ssl.SSLContext, enabled: bool) -> None:
        pointer = self._pointer(ctx)
        mode = SSL_SESS_CACHE_SERVER if enabled else SSL_SESS_CACHE_OFF
        self._ctrl(pointer, SSL_CTRL_SET_SESS_CACHE_MODE, mode, None)
        if self._ctrl(pointer, SSL_CTRL_GET_SESS_CACHE_MODE, 0, None) != mode:
            raise ShimError("session cache mode did not take")

    def invalidate_sessions(self, ctx: ssl.SSLContext) -> None:
        """Forget every cached session and issued ticket: nothing made before can be resumed."""
        import os

        pointer = self._pointer(ctx)
        self._flush(pointer, 2**62)  # every session "expired" by then
        keys = ctypes.create_string_buffer(os.urandom(TICKET_KEYS_LENGTH), TICKET_KEYS_LENGTH)
        if self._ctrl(pointer, SSL_CTRL_SET_TLSEXT_TICKET_KEYS, TICKET_KEYS_LENGTH, keys) != 1:
            raise ShimError("OpenSSL refused new session ticket keys")


_probed = False
_detected: OpenSslShim | None = None
detect_detail = "not probed yet"  # why the shim is (not) available, for the log line and the status


def _run_self_test() -> tuple[bool, str]:
    """Run the self-test in a child process: (passed, the last line it wrote or why it could not run)."""
    try:
        result = subprocess.run([sys.executable, "-P", __file__, "--self-test"], capture_output=True, text=True,
                                timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    passed = result.returncode == 0 and result.stdout.strip().endswith("shim ok")
    detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or [f"exit {result.returncode}"]
    return passed, detail[0]


def detect() -> OpenSslShim | None:
    """The shim when this interpreter passed the self-test (run once per process, in a child), else None."""
    global _probed, _detected, detect_detail
    if not _probed:
        _probed = True
        passed, detect_detail = _run_self_test()
        if passed:
            try:
                _detected = OpenSslShim()
            except (OSError, AttributeError) as exc:
                detect_detail = str(exc)
    return _detected


def _self_test() -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    import os
    import tempfile

    shim = OpenSslShim()
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    shim._pointer(server)
    server.options |= ssl.OP_NO_TICKET
    shim._pointer(server)  # still matches after a change made through Python
    shim.set_verify_depth(server, 3)
    shim.set_session_cache(server, False)
    shim.set_session_cache(server, True)
    shim.set_tls13_suites(server, "TLS_CHACHA20_POLY1305_SHA256")
    shim.invalidate_sessions(server)

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "shim-self-test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(minutes=5)).sign(key, hashes.SHA256()))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "pair.pem")
        with open(path, "wb") as out:
            out.write(cert.public_bytes(serialization.Encoding.PEM))
            out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        server.load_cert_chain(path)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for obj in (c, s):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    cipher = s.cipher()
    if cipher is None or cipher[0] != "TLS_CHACHA20_POLY1305_SHA256":
        raise ShimError(f"TLS 1.3 suite not applied: {cipher}")
    print("shim ok")


if __name__ == "__main__":
    if sys.argv[1:] == ["--self-test"]:
        _self_test()
