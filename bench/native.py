"""Building the C connect-rate client (``connect_rate.c``) once per source version, when a compiler is there.

The binary goes to ``~/.cache/wharf/bench-bin/connect_rate-<source hash>``; without ``cc`` or OpenSSL's headers
(Debian: ``libssl-dev``) the harness falls back to the Python client ``bench/connector.py`` and says so.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "connect_rate.c"
CACHE = Path.home() / ".cache" / "wharf" / "bench-bin"


class BuildError(RuntimeError):
    pass


def connect_client() -> Path:
    """Path of the built C connect client; raises BuildError with the reason when it cannot be built."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    binary = CACHE / f"connect_rate-{digest}"
    if binary.exists():
        return binary
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise BuildError("no C compiler (cc)")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(binary.name + ".part")
    build = subprocess.run([compiler, "-O2", "-o", str(partial), str(SOURCE), "-lssl", "-lcrypto"],
                           capture_output=True, text=True, timeout=120, check=False)
    if build.returncode != 0:
        raise BuildError(f"cc failed (OpenSSL headers missing? Debian: libssl-dev): {build.stderr.strip()[-300:]}")
    partial.replace(binary)
    return binary
