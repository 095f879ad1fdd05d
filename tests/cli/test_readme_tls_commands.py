"""The README's TLS and mutual-TLS commands, run as written against the embedded default (ports moved to loopback
ephemeral ones): they find the CA and client certificate the broker generated, wherever the state directory is."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_tls_block() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    [block] = [b for b in blocks if "mosquitto_pub" in b and "CERTS=" in b]
    return block


def publish_commands(port: int) -> str:
    """The block's CERTS line and mosquitto_pub commands (continuations joined), aimed at ``port``."""
    text = readme_tls_block().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith(("CERTS=", "mosquitto_pub "))]
    assert len(lines) == 3, lines
    return "set -e\n" + "\n".join(line.replace("-p 8883", f"-p {port} -q 1") for line in lines) + "\n"


@pytest.mark.parametrize("where", ["WHARF_HOME", "XDG_STATE_HOME", "HOME"])
def test_readme_tls_commands_work_with_the_generated_pki(broker_process, tmp_path, where):
    if not shutil.which("mosquitto_pub"):
        pytest.fail("mosquitto_pub is not installed (Debian mosquitto-clients)")
    home = tmp_path / "home"
    home.mkdir()
    env = {f"WHARF_{kind}_BIND": "127.0.0.1:0" for kind in ("TCP", "SSL", "WS", "WSS", "DASHBOARD")}
    # One of the three places the state directory can be, the same for the broker and the shell.
    locations = {"WHARF_HOME": {"WHARF_HOME": str(tmp_path / "wharf-home"), "HOME": str(home)},
                 "XDG_STATE_HOME": {"XDG_STATE_HOME": str(tmp_path / "xdg"), "HOME": str(home)},
                 "HOME": {"HOME": str(home)}}[where]
    expected = {"WHARF_HOME": tmp_path / "wharf-home", "XDG_STATE_HOME": tmp_path / "xdg" / "wharf",
                "HOME": home / ".local" / "state" / "wharf"}[where] / "certs"
    base = {k: v for k, v in os.environ.items() if k not in ("WHARF_HOME", "XDG_STATE_HOME", "HOME")}
    # Empty counts as unset, for the broker and for the shell (broker_process puts WHARF_HOME in tmp_path only
    # when env names none).
    unset = {"WHARF_HOME": "", "XDG_STATE_HOME": ""}
    broker = broker_process(None, env={**env, **unset, **locations})
    assert f"trust the CA {expected}/rootCA.crt" in broker.log
    shell = subprocess.run(["bash", "-c", publish_commands(broker.port("ssl:default"))], capture_output=True,
                           text=True, timeout=60, env={**base, **locations})
    assert shell.returncode == 0, shell.stderr
