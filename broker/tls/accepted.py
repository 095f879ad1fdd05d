"""The last certificate material a TLS listener accepted, kept on disk for a restart with bad files.

After every generation it serves, the runtime writes that generation's certificate chain, key (as it was in
keyfile: still encrypted when it was) and server CA bundle to ``<directory>/<listener>.json``: one file, so the
pair is replaced whole; written aside, fsynced and renamed over, mode 0600 in a 0700 directory. A broker
started while its files hold material the checks refuse (``validation.py``) serves this instead, and says so
(``status()["serving_last_accepted"]``, the log, ``wharf_tls_material_refused_total``); it never serves the
refused material. The directory is ``tls-accepted`` in ``durable_storage.data_dir`` when durable storage is on
(a persistent volume in operator-managed pods); without it nothing is kept (docs/tls.md, "Reload").
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..atomic_file import write_atomically

FILE_VERSION = 1


@dataclass(frozen=True)
class Accepted:
    cert_pem: bytes
    key_pem: bytes
    server_ca_pem: bytes
    fingerprint: str
    saved_at: str


def _path(directory: Path, listener_id: str) -> Path:
    return directory / (re.sub(r"[^A-Za-z0-9_.-]", "_", listener_id) + ".json")


def save(directory: Path, listener_id: str, cert_pem: bytes, key_pem: bytes, server_ca_pem: bytes,
         fingerprint: str) -> None:
    """Replace the listener's record atomically (raises ``OSError`` when the directory is not writable)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = _path(directory, listener_id)
    record = {"version": FILE_VERSION, "listener": listener_id, "fingerprint": fingerprint,
              "saved_at": dt.datetime.now(dt.timezone.utc).isoformat(), "cert_pem": cert_pem.decode("ascii"),
              "key_pem": key_pem.decode("ascii"), "server_ca_pem": server_ca_pem.decode("ascii")}
    write_atomically(path, json.dumps(record).encode("ascii"), 0o600)


def load(directory: Path, listener_id: str) -> Accepted | None:
    """The listener's record, or None when there is none or it cannot be read (it is then just not used)."""
    try:
        record = json.loads(_path(directory, listener_id).read_text())
        if record.get("version") != FILE_VERSION:
            return None
        return Accepted(cert_pem=record["cert_pem"].encode("ascii"), key_pem=record["key_pem"].encode("ascii"),
                        server_ca_pem=record["server_ca_pem"].encode("ascii"), fingerprint=record["fingerprint"],
                        saved_at=record["saved_at"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
