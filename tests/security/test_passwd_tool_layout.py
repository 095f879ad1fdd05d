"""``python -m wharf_broker.authn.passwd`` rewrites a password file without losing its comments, blank lines or
the order of the other entries."""

from __future__ import annotations

import subprocess
import sys

from wharf_broker.authn import hashing
from wharf_broker.authn.password_file import parse_password_file


def passwd(*args: str, password: str | None = None) -> None:
    subprocess.run([sys.executable, "-m", "wharf_broker.authn.passwd", *args],
                   input=(password + "\n").encode() if password is not None else None,
                   capture_output=True, check=True, timeout=60)


def test_comments_blank_lines_and_order_survive_add_replace_and_delete(tmp_path):
    users = tmp_path / "users.txt"
    alice = hashing.hash_password(b"one", iterations=1000)
    bob = hashing.hash_password(b"two", iterations=1000)
    users.write_text(f"# Wharf users, managed by ops\n\n# devices\nalice:{alice}\n\n  # humans\nbob:{bob}")
    passwd("-f", str(users), "--stdin", "--iterations", "1000", "carol", password="three")
    passwd("-f", str(users), "--stdin", "--iterations", "1000", "alice", password="four")
    lines = users.read_text().split("\n")
    assert lines[:3] == ["# Wharf users, managed by ops", "", "# devices"]
    assert lines[3].startswith("alice:") and lines[3] != f"alice:{alice}"
    assert lines[4:7] == ["", "  # humans", f"bob:{bob}"]
    assert lines[7].startswith("carol:") and lines[8:] == [""]
    parsed = parse_password_file(users.read_text())
    assert list(parsed) == ["alice", "bob", "carol"]
    assert hashing.verify_password(b"four", parsed["alice"])
    passwd("-f", str(users), "-D", "bob")
    assert users.read_text().split("\n")[:6] == ["# Wharf users, managed by ops", "", "# devices", lines[3], "",
                                                 "  # humans"]
    assert list(parse_password_file(users.read_text())) == ["alice", "carol"]
