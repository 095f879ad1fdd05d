"""Fixtures for the security tests: password files made with the real tool, and small helpers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

# Low iteration counts keep the tests quick; the format and the code path are the production ones.
TEST_ITERATIONS = "1000"


def add_user(path: Path, username: str, password: str) -> None:
    """``python -m wharf_broker.authn.passwd`` as an operator runs it."""
    subprocess.run([sys.executable, "-m", "wharf_broker.authn.passwd", "-f", str(path), "--stdin",
                    "--iterations", TEST_ITERATIONS, username], input=password.encode() + b"\n", check=True,
                   timeout=60)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus exposition ``text`` (0 when absent)."""
    rendered = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(rendered) + r"\}" if labels else "") + r" (\S+)"
    match = re.search("^" + pattern + "$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
def user_file(tmp_path) -> Path:
    path = tmp_path / "users.txt"
    add_user(path, "alice", "wonderland")
    add_user(path, "bob", "builder")
    return path
