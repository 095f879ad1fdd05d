"""A TLS-PSK client's identity is its MQTT username, end to end: real ``openssl s_client -psk`` sessions carrying
real MQTT CONNECT and SUBSCRIBE packets to a broker process that refuses anonymous clients and runs a password
file and an ACL by ``${username}``."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from .conftest import add_user, metric

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")

SECRET = b"8c701116e9127c57a99d5563709af3deaca75ab9f6ee2a39"
ACL = """
{allow, all, subscribe, ["users/${username}/#"]}.
{deny, all}.
"""


def _string(text: str) -> bytes:
    return len(text).to_bytes(2, "big") + text.encode()


# MQTT 3.1.1 CONNECT (clean session, keep-alive 60s, no user name, no password) and a SUBSCRIBE (id 1) to the
# client's own tree and to someone else's.
CONNECT = b"\x10\x0e" + _string("MQTT") + b"\x04\x02\x00\x3c" + _string("c1")
_FILTERS = _string("users/myclient1/#") + b"\x00" + _string("users/other/#") + b"\x00"
SUBSCRIBE = b"\x82" + bytes([2 + len(_FILTERS)]) + b"\x00\x01" + _FILTERS
CONNACK_ACCEPTED = b"\x20\x02\x00\x00"
CONNACK_NOT_AUTHORIZED = b"\x20\x02\x00\x05"
SUBACK_OWN_GRANTED_OTHER_REFUSED = b"\x90\x04\x00\x01\x00\x80"


def s_client(port: int, *args: str, expect: bytes, limit: float = 20.0) -> bytes:
    """``openssl s_client`` sending CONNECT + SUBSCRIBE; its output once ``expect`` shows up or it exits."""
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                             *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    os.set_blocking(proc.stdout.fileno(), False)
    output = b""
    deadline = time.monotonic() + limit
    try:
        proc.stdin.write(CONNECT + SUBSCRIBE)
        proc.stdin.flush()
        while time.monotonic() < deadline:
            output += proc.stdout.read() or b""
            if expect in output or proc.poll() is not None:
                break
            time.sleep(0.05)
        output += proc.stdout.read() or b""
    except BrokenPipeError:
        pass
    finally:
        proc.kill()
        proc.wait()
    return output


@pytest.fixture
def broker(broker_process, certs, tmp_path):
    users = tmp_path / "users.txt"
    add_user(users, "alice", "wonderland")  # the password chain is on, and knows nobody called myclient1
    acl = tmp_path / "acl.conf"
    acl.write_text(ACL)
    psk = tmp_path / "init.psk"
    psk.write_bytes(b"myclient1:" + SECRET + b"\n")
    return broker_process(f"""
listeners.ssl.default {{
  bind = "127.0.0.1:0"
  ssl_options {{
    keyfile = "{certs / 'server.key'}"
    certfile = "{certs / 'server.crt'}"
    verify = verify_none
  }}
}}
psk_authentication {{ enable = true, init_file = "{psk}" }}
dashboard.listeners.http.bind = "127.0.0.1:0"
authentication {{
  allow_anonymous = false
  password_file {{ enable = true, path = "{users}", reload_interval = 1h }}
}}
authorization {{
  no_match = deny
  file {{ enable = true, path = "{acl}", reload_interval = 1h }}
}}
""")


def psk_args(*extra: str) -> tuple[str, ...]:
    return ("-psk_identity", "myclient1", "-psk", SECRET.hex(), *extra)


def test_a_psk_client_connects_as_its_identity_and_its_acl_applies(broker):
    port = broker.port("ssl:default")
    out = s_client(port, *psk_args("-tls1_2", "-cipher", "PSK-AES128-GCM-SHA256:@SECLEVEL=0"),
                   expect=SUBACK_OWN_GRANTED_OTHER_REFUSED)
    # Accepted without any password, although anonymous clients are refused...
    assert CONNACK_ACCEPTED in out, out[-600:]
    # ... and ${username} is the PSK identity: its own tree granted, another one refused.
    assert SUBACK_OWN_GRANTED_OTHER_REFUSED in out, out[-600:]
    # TLS 1.3 with a PSK suite really used: the same.
    out13 = s_client(port, *psk_args("-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"),
                     expect=SUBACK_OWN_GRANTED_OTHER_REFUSED)
    assert SUBACK_OWN_GRANTED_OTHER_REFUSED in out13, out13[-600:]
    status, body = broker.admin("GET", "/metrics")
    assert status == 200
    assert metric(body.decode(), "wharf_authn_total", result="allow") == 2


def test_a_psk_offered_but_unused_under_tls13_is_no_username(broker):
    port = broker.port("ssl:default")
    # Default TLS 1.3 suites: the server sees the offered identity, yet the handshake runs on the certificate.
    # The client is then anonymous, and anonymous clients are refused.
    out = s_client(port, *psk_args("-tls1_3"), expect=CONNACK_NOT_AUTHORIZED)
    assert CONNACK_NOT_AUTHORIZED in out, out[-600:]
    assert CONNACK_ACCEPTED not in out
    # A wrong key never gets as far as MQTT.
    wrong = s_client(port, "-psk_identity", "myclient1", "-psk", b"wrong".hex(), "-tls1_2", "-cipher",
                     "PSK-AES128-GCM-SHA256:@SECLEVEL=0", expect=CONNACK_ACCEPTED, limit=10)
    assert b"\x20\x02" not in wrong
