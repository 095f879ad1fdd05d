"""The client-CA check (``tls/client_ca_check.py``) on both TLS backends, with real mTLS connections: a client of
an intermediate CA that sends its chain is judged by path validation where the backend shows the chain it sent
(pyOpenSSL), and counted as unchecked where it does not (the stdlib on Python 3.11) and the bundle does not hold
its issuer either."""

from __future__ import annotations

import asyncio
import datetime as dt
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from wharf_broker.tls import client_ca_check
from wharf_broker.tls.devpki import CertificateAuthority
from wharf_tls_helpers import client_context, options, serving

BACKENDS = ["stdlib", "pyopenssl"]
CAN_SEE_SENT_CHAIN = {"pyopenssl": True, "stdlib": False}


class Kept(asyncio.Protocol):
    """Keeps every accepted connection (standing in for the broker's channels), echoes nothing."""

    live: list = []

    def connection_made(self, transport) -> None:
        Kept.live.append(transport)


def channels(listener_id: str) -> list:
    return [SimpleNamespace(connection=SimpleNamespace(listener=SimpleNamespace(id=listener_id), transport=t))
            for t in Kept.live]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_clients_are_judged_by_their_chain_or_counted_as_unchecked(files, backend):
    Kept.live = []
    fleet = CertificateAuthority("Fleet Root")
    root2 = CertificateAuthority("Second Root")
    intermediate = root2.intermediate("Fleet Intermediate")
    bundle = files.write("clients.pem", files.ca.cert_pem + fleet.cert_pem + root2.cert_pem)
    opts = options(files, cacertfile=bundle, verify="verify_peer", fail_if_no_peer_cert=True, reload_interval=3600)
    direct = files.issued_files("direct", fleet.issue("direct", client=True))
    chained = files.issued_files("chained", intermediate.issue("chained", client=True), with_chain=True)
    async with serving(opts, backend=backend, protocol=Kept) as rt:
        writers = []
        for cert in (direct, chained, direct):
            _, writer = await asyncio.open_connection("127.0.0.1", rt.port, ssl=client_context(files, cert),
                                                      server_hostname="localhost")
            writers.append(writer)
        for _ in range(200):
            if len(Kept.live) == 3:
                break
            await asyncio.sleep(0.05)
        clients = client_ca_check.connected_certificates(channels("ssl:test"), "ssl:test")
        assert len(clients) == 3
        assert bool(clients[1][1]) == CAN_SEE_SENT_CHAIN[backend]
        generation = rt.current_generation
        current = list(generation.material.ca_certs)

        def judge(candidate: bytes) -> dict:
            return client_ca_check.check("ssl:test", candidate, current, clients,
                                         partial_chain=generation.policy.partial_chain,
                                         depth=generation.policy.depth).as_dict()

        report = judge(files.ca.cert_pem + fleet.cert_pem)  # the second root dropped
        assert report["connections"] == 3
        if CAN_SEE_SENT_CHAIN[backend]:
            assert report["would_fail"] == 1 and report["unchecked"] == 0
            assert report["issuers"] == [{"issuer": intermediate.cert.subject.rfc4514_string(), "clients": 1}]
            assert report["methods"] == {"chain": 3}
        else:
            assert report["would_fail"] == 0 and report["unchecked"] == 1
            assert report["methods"] == {"chain": 2, "unchecked": 1}

        report = judge(root2.cert_pem)  # the fleet root dropped: the two direct clients, on either backend
        assert report["would_fail"] == 2
        assert report["issuers"] == [{"issuer": fleet.cert.subject.rfc4514_string(), "clients": 2}]

        # With the intermediate in the bundle (as an extra CA), the stdlib backend can judge the chained client too.
        current.append(intermediate.cert)
        report = judge(files.ca.cert_pem + fleet.cert_pem)
        assert report["unchecked"] == 0 and report["would_fail"] == 1, report
        for writer in writers:
            writer.close()


def test_a_client_whose_certificate_expired_while_connected_is_not_counted_against_the_bundle():
    fleet = CertificateAuthority("Fleet Root")
    now = dt.datetime.now(dt.timezone.utc)
    expired = fleet.issue("old", client=True, not_before=now - dt.timedelta(days=2),
                          not_after=now - dt.timedelta(days=1))
    clients = [(expired.cert.public_bytes(Encoding.DER), ())]
    kept = client_ca_check.check("ssl:x", fleet.cert_pem, [fleet.cert], clients, partial_chain=False, depth=10)
    assert kept.would_fail == 0 and kept.methods == {"issuer": 1}  # judged by its issuer
    other = CertificateAuthority("Other Root")
    dropped = client_ca_check.check("ssl:x", other.cert_pem, [fleet.cert], clients, partial_chain=False, depth=10)
    assert dropped.would_fail == 1

