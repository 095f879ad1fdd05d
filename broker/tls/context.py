"""The one place TLS contexts are built, for both backends, and the in-memory smoke handshake.

stdlib backend: a listener's server is bound to a *base* context whose SNI callback hands every new
connection the current *material* context (certificate, key, trust store, CRLs). OpenSSL takes verify mode,
version limits, verify flags and depth from the base context and the rest from the material one, so both are
configured by the same ``configure_stdlib`` and a policy change is written into the base context in place.

pyOpenSSL backend (OCSP stapling, PSK): one complete ``SSL.Context`` per generation, chosen per connection.
pyOpenSSL is imported only by the functions of that backend (through ``compat.pyopenssl``), so a broker whose
listeners all run on the stdlib never loads it.
"""

from __future__ import annotations

import os
import ssl
import tempfile
import warnings
from typing import TYPE_CHECKING, Any, Callable

from .compat.openssl_shim import OpenSslShim, ShimError
from .compat.pyopenssl import PyOpenSsl
from .errors import TlsConfigError
from .material import Material
from .options import STDLIB_VERSIONS, VERSION_ORDER, TlsPolicy

if TYPE_CHECKING:
    from OpenSSL import SSL

OP_ALLOW_CLIENT_RENEGOTIATION = 0x100  # SSL_OP_ALLOW_CLIENT_RENEGOTIATION; no Python constant
OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION = 0x40000
OP_NO_RENEGOTIATION = getattr(ssl, "OP_NO_RENEGOTIATION", 0x40000000)  # SSL_OP_NO_RENEGOTIATION
# TLS 1.2 suites when ``ciphers`` names none: forward secrecy (ECDHE) and AEAD only, so no static-RSA key
# exchange and no CBC-SHA1. TLS 1.0/1.1 (asked for explicitly) cannot use them and keep OpenSSL's DEFAULT.
DEFAULT_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_NO_VERSION_OPS = {"tlsv1": ssl.OP_NO_TLSv1, "tlsv1.1": ssl.OP_NO_TLSv1_1, "tlsv1.2": ssl.OP_NO_TLSv1_2,
                   "tlsv1.3": ssl.OP_NO_TLSv1_3}
# What PSK listeners offer when no ciphers are configured: OpenSSL's default list leaves PSK suites out. PSK
# suites come first so that a client offering them (it has a key) gets one; clients without a key never offer
# them and are served from the default list. Forward-secret PSK suites first.
PSK_CIPHERS = "ECDHE-PSK:DHE-PSK:RSA-PSK:PSK:ALL:!COMPLEMENTOFDEFAULT:!eNULL"  # DEFAULT is only valid first
SESSION_ID_CONTEXT = b"wharf"


def _excluded_versions(policy: TlsPolicy) -> list[str]:
    """Versions between min and max that were not asked for (a non-contiguous ``versions`` list)."""
    low, high = VERSION_ORDER.index(policy.min_version), VERSION_ORDER.index(policy.max_version)
    return [v for v in VERSION_ORDER[low:high + 1] if v not in policy.versions]


def tls12_cipher_string(policy: TlsPolicy) -> str:
    default = "DEFAULT" if policy.legacy_versions else DEFAULT_TLS12_CIPHERS
    ciphers = policy.tls12_ciphers or (PSK_CIPHERS if policy.psk_enabled else default)
    if policy.legacy_versions or (policy.psk_enabled and not policy.tls12_ciphers):
        # TLS 1.0/1.1 and plain-PSK suites only exist below OpenSSL 3's default security level.
        ciphers += ":@SECLEVEL=0"
    return ciphers


def configure_stdlib(ctx: ssl.SSLContext, policy: TlsPolicy, shim: OpenSslShim | None) -> None:
    """Write ``policy`` into ``ctx``; used for the base context (in place, on every change) and each material one."""
    if not policy.verify_peer:
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.verify_mode = ssl.CERT_REQUIRED if policy.fail_if_no_peer_cert else ssl.CERT_OPTIONAL
    # Widen first so that the new limits never cross the old ones.
    ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED
    with warnings.catch_warnings():
        # TLS 1.0/1.1 are deprecated in Python; options.py already warned that they were asked for.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.maximum_version = STDLIB_VERSIONS[policy.max_version]
        ctx.minimum_version = STDLIB_VERSIONS[policy.min_version]
    options = ctx.options
    for version, flag in _NO_VERSION_OPS.items():
        options = options | flag if version in _excluded_versions(policy) else options & ~flag
    options = options | ssl.OP_CIPHER_SERVER_PREFERENCE if policy.honor_cipher_order else \
        options & ~ssl.OP_CIPHER_SERVER_PREFERENCE
    options = options & ~ssl.OP_NO_TICKET if policy.reuse_sessions else options | ssl.OP_NO_TICKET
    # Client-initiated renegotiation is refused unless asked for (TLS <= 1.2; TLS 1.3 has none).
    options = (options | OP_ALLOW_CLIENT_RENEGOTIATION) & ~OP_NO_RENEGOTIATION if policy.client_renegotiation \
        else (options & ~OP_ALLOW_CLIENT_RENEGOTIATION) | OP_NO_RENEGOTIATION
    options = options & ~OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION if policy.secure_renegotiate else \
        options | OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION
    with warnings.catch_warnings():
        # OP_NO_TLSv1_x is deprecated in Python but is the only way to leave a gap in ``versions``.
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.options = options
    ctx.num_tickets = 2 if policy.reuse_sessions else 0
    try:
        ctx.set_ciphers(tls12_cipher_string(policy))
    except ssl.SSLError:
        raise TlsConfigError(f"ciphers: OpenSSL knows none of {policy.tls12_ciphers!r}") from None
    flags = ctx.verify_flags & ~(ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_CRL_CHECK_CHAIN | ssl.VERIFY_X509_PARTIAL_CHAIN)
    if policy.crlfile:
        flags |= ssl.VERIFY_CRL_CHECK_LEAF
    if policy.partial_chain:
        flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.verify_flags = flags
    if shim is not None:
        try:
            shim.set_verify_depth(ctx, policy.depth)
            shim.set_tls13_suites(ctx, policy.tls13_suites)
            shim.set_session_cache(ctx, policy.reuse_sessions)
        except ShimError as exc:
            raise TlsConfigError(f"cannot apply depth/TLS 1.3 suites/session cache: {exc}") from None


def _write_private(directory: str, filename: str, data: bytes) -> str:
    path = os.path.join(directory, filename)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    return path


def build_stdlib_context(policy: TlsPolicy, material: Material, shim: OpenSslShim | None) -> ssl.SSLContext:
    """A material context from the snapshot's bytes (never from the files again: no TOCTOU)."""
    snapshot = material.snapshot
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    configure_stdlib(ctx, policy, shim)
    # OpenSSL loads only from files; a private 0700 directory holds them for the moment of loading.
    with tempfile.TemporaryDirectory(prefix="wharf-tls-") as tmp:
        cert_path = _write_private(tmp, "cert.pem", snapshot.cert_pem)
        key_path = _write_private(tmp, "key.pem", snapshot.key_pem)
        password = snapshot.password
        try:
            # A callable password: OpenSSL never falls back to prompting on a terminal.
            ctx.load_cert_chain(cert_path, key_path, password=lambda: password)
        except ssl.SSLError as exc:
            raise TlsConfigError(f"certfile/keyfile: OpenSSL refused the pair: {exc.reason or exc}") from None
        if snapshot.ca_pem:
            try:
                ctx.load_verify_locations(cafile=_write_private(tmp, "ca.pem", snapshot.ca_pem))
            except ssl.SSLError as exc:
                raise TlsConfigError(f"cacertfile: OpenSSL refused it: {exc.reason or exc}") from None
        if policy.crlfile:
            try:
                ctx.load_verify_locations(cafile=_write_private(tmp, "crl.pem", snapshot.crl_pem))
            except ssl.SSLError as exc:
                raise TlsConfigError(f"crlfile: OpenSSL refused it: {exc.reason or exc}") from None
    return ctx


def build_base_context(policy: TlsPolicy, shim: OpenSslShim | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    configure_stdlib(ctx, policy, shim)
    return ctx


def _pump(a_in: ssl.MemoryBIO, a_out: ssl.MemoryBIO, b_in: ssl.MemoryBIO, b_out: ssl.MemoryBIO) -> None:
    b_in.write(a_out.read())
    a_in.write(b_out.read())


def _smoke_client(policy: TlsPolicy, version: str | None) -> ssl.SSLContext:
    """A client for the smoke handshake; ``version`` pins one version, else the policy's whole range."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        client.minimum_version = STDLIB_VERSIONS[version or policy.min_version]
        client.maximum_version = STDLIB_VERSIONS[version or policy.max_version]
    if policy.legacy_versions or policy.tls12_ciphers:
        client.set_ciphers("ALL:@SECLEVEL=0")
    return client


def _smoke_versions(policy: TlsPolicy) -> list[str | None]:
    # Each legacy version on its own first ("asked for but impossible here" must be an error at start that
    # says so, not a surprise for the first old client), then the normal negotiation.
    return [v for v in policy.versions if v in ("tlsv1", "tlsv1.1")] + [None]


def _smoke_failed(policy: TlsPolicy, version: str | None, detail) -> TlsConfigError:
    if version is not None:
        return TlsConfigError(f"versions: the local OpenSSL cannot negotiate {version} with this listener's "
                              f"settings: {detail}")
    return TlsConfigError(f"smoke handshake with the new certificate failed (versions {', '.join(policy.versions)}, "
                          f"ciphers {tls12_cipher_string(policy)!r} {policy.tls13_suites!r}): {detail}")


def smoke_stdlib(ctx: ssl.SSLContext, policy: TlsPolicy) -> str:
    """Handshake in memory with ``ctx`` (proves the key signs and versions/ciphers fit); returns the suite."""
    return [_smoke_stdlib_once(ctx, policy, version) for version in _smoke_versions(policy)][-1]


def _smoke_stdlib_once(ctx: ssl.SSLContext, policy: TlsPolicy, version: str | None) -> str:
    verify_mode = ctx.verify_mode
    # The material context's verify mode is never used for serving (the base context's is), and the smoke
    # client has no certificate to offer.
    ctx.verify_mode = ssl.CERT_NONE
    try:
        c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        client = _smoke_client(policy, version).wrap_bio(c_in, c_out)
        server = ctx.wrap_bio(s_in, s_out, server_side=True)
        done = [False, False]
        for _ in range(20):
            for index, obj in enumerate((client, server)):
                if not done[index]:
                    try:
                        obj.do_handshake()
                        done[index] = True
                    except ssl.SSLWantReadError:
                        pass
            _pump(c_in, c_out, s_in, s_out)
            if all(done):
                return f"{server.version()} {server.cipher()[0]}"
        raise _smoke_failed(policy, version, "the handshake did not complete")
    except ssl.SSLError as exc:
        raise _smoke_failed(policy, version, exc.reason or exc) from None
    finally:
        ctx.verify_mode = verify_mode


def build_pyopenssl_context(pyossl: PyOpenSsl, policy: TlsPolicy,  # noqa: C901 - one branch per ssl_options field
                            material: Material, configure: Callable[[SSL.Context], None] | None = None) -> SSL.Context:
    """A complete pyOpenSSL server context for one generation; ``configure`` adds PSK/OCSP callbacks."""
    SSL, crypto = pyossl.SSL, pyossl.crypto  # the modules under their usual names
    versions = {"tlsv1": SSL.TLS1_VERSION, "tlsv1.1": SSL.TLS1_1_VERSION, "tlsv1.2": SSL.TLS1_2_VERSION,
                "tlsv1.3": SSL.TLS1_3_VERSION}
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    try:
        ctx.set_min_proto_version(versions[policy.min_version])
        ctx.set_max_proto_version(versions[policy.max_version])
        options = SSL.OP_NO_COMPRESSION
        for version in _excluded_versions(policy):
            options |= _NO_VERSION_OPS[version]
        if policy.honor_cipher_order:
            options |= SSL.OP_CIPHER_SERVER_PREFERENCE
        if not policy.reuse_sessions:
            options |= SSL.OP_NO_TICKET
            ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        if policy.client_renegotiation:
            options |= OP_ALLOW_CLIENT_RENEGOTIATION
        else:
            options |= OP_NO_RENEGOTIATION
        if not policy.secure_renegotiate:
            options |= OP_ALLOW_UNSAFE_LEGACY_RENEGOTIATION
        ctx.set_options(options)
        ctx.set_session_id(SESSION_ID_CONTEXT)
        ctx.set_cipher_list(tls12_cipher_string(policy).encode())
        if policy.tls13_suites:
            ctx.set_tls13_ciphersuites(policy.tls13_suites.encode())
    except SSL.Error as exc:
        raise TlsConfigError(f"the pyOpenSSL backend refused versions/ciphers: {exc}") from None

    try:
        ctx.use_certificate(material.leaf)
        for extra in material.chain[1:]:
            ctx.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
        ctx.use_privatekey(material.private_key)
        ctx.check_privatekey()
    except SSL.Error as exc:
        raise TlsConfigError(f"certfile/keyfile: OpenSSL refused the pair: {exc}") from None

    if policy.verify_peer:
        mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if policy.fail_if_no_peer_cert else 0)
        ctx.set_verify(mode, None)  # None: OpenSSL's own verification decides
        ctx.set_verify_depth(policy.depth)
        store = ctx.get_cert_store()
        for ca in material.ca_certs:
            store.add_cert(crypto.X509.from_cryptography(ca))
        flags = 0
        for crl in material.crls:
            store.add_crl(crl)
            flags |= crypto.X509StoreFlags.CRL_CHECK
        if policy.partial_chain:
            flags |= crypto.X509StoreFlags.PARTIAL_CHAIN
        if flags:
            store.set_flags(flags)
    if configure is not None:
        configure(ctx)
    return ctx


def smoke_pyopenssl(pyossl: PyOpenSsl, ctx: SSL.Context, policy: TlsPolicy) -> str:
    return [_smoke_pyopenssl_once(pyossl.SSL, ctx, policy, version) for version in _smoke_versions(policy)][-1]


def _smoke_pyopenssl_once(SSL: Any, ctx: SSL.Context, policy: TlsPolicy, version: str | None) -> str:
    server = SSL.Connection(ctx, None)
    server.set_accept_state()
    server.set_verify(SSL.VERIFY_NONE, None)  # the smoke client has no certificate to offer
    c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = _smoke_client(policy, version).wrap_bio(c_in, c_out)
    done = [False, False]
    try:
        for _ in range(20):
            if not done[0]:
                try:
                    client.do_handshake()
                    done[0] = True
                except ssl.SSLWantReadError:
                    pass
            outgoing = c_out.read()
            if outgoing:
                server.bio_write(outgoing)
            if not done[1]:
                try:
                    server.do_handshake()
                    done[1] = True
                except SSL.WantReadError:
                    pass
            try:
                c_in.write(server.bio_read(65536))
            except SSL.WantReadError:
                pass
            if all(done):
                return f"{server.get_protocol_version_name()} {server.get_cipher_name()}"
    except (ssl.SSLError, SSL.Error) as exc:
        raise _smoke_failed(policy, version, exc) from None
    raise _smoke_failed(policy, version, "the handshake did not complete")

