"""Certificate files uploaded through the Dashboard: written atomically, named by content, pruned when unused.

Each listener has its own folder under ``dashboard.upload_dir`` (``<upload_dir>/<type>-<name>/``). A file is
named by what it holds and a digest of its bytes (``certfile-<sha256 prefix>.pem``), so a new upload never
overwrites a file that is being served: it is written to a temporary name, flushed to disk and renamed into
place. Files created by an update that is then refused are removed again; after a successful update, the files
no longer referenced by the listener's options are removed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic_file import write_atomically
from ..config.model import SslOptions


@dataclass
class StoredUploads:
    paths: dict[str, str] = field(default_factory=dict)  # form field → absolute path
    created: list[Path] = field(default_factory=list)  # files that did not exist before

    def discard(self) -> None:
        """Remove the files this upload created (the update they were for was refused)."""
        for path in self.created:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        self.created.clear()


def listener_dir(upload_dir: str, listener_id: str) -> Path:
    return Path(upload_dir).resolve() / listener_id.replace(":", "-")


def store(upload_dir: str, listener_id: str, uploads: dict[str, bytes]) -> StoredUploads:
    """Write every upload into the listener's folder; raises ``OSError`` (after removing what it wrote)."""
    stored = StoredUploads()
    if not uploads:
        return stored
    folder = listener_dir(upload_dir, listener_id)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for name, data in uploads.items():
            path = folder / f"{name}-{hashlib.sha256(data).hexdigest()[:16]}.pem"
            if not path.exists():
                # Keys stay private to the broker's user; certificates are public anyway.
                write_atomically(path, data, 0o600 if name == "keyfile" else 0o644)
                stored.created.append(path)
            stored.paths[name] = str(path)
    except OSError:
        stored.discard()
        raise
    return stored


def referenced(options: SslOptions) -> set[str]:
    return {str(Path(p).resolve()) for p in (options.certfile, options.keyfile, options.cacertfile,
                                             options.crlfile, options.ocsp.issuer_pem) if p}


def prune(upload_dir: str, listener_id: str, keep: set[str]) -> list[Path]:
    """Remove uploaded files of this listener that ``keep`` (resolved paths) no longer names."""
    folder = listener_dir(upload_dir, listener_id)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.glob("*.pem"):
        if str(path.resolve()) not in keep:
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed
