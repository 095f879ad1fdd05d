"""``wharf-operator`` installed without the ``operator`` extra: one line saying what to install, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Loaded at interpreter start (sitecustomize on PYTHONPATH): kopf and kubernetes cannot be imported, as in an
# environment where only `pip install wharf` ran.
BLOCKER = '''
import sys

class _WithoutOperatorExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("kopf", "kubernetes"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _WithoutOperatorExtra())
'''


def run_without_extra(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    pythonpath = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "wharf_operator", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": pythonpath}, cwd=tmp_path, timeout=60)


def test_without_kopf_the_operator_says_what_to_install(tmp_path):
    result = run_without_extra(tmp_path)
    assert result.returncode == 1
    assert result.stderr == ("wharf-operator: the operator's dependencies are not installed (no module 'kopf'): "
                             "pip install 'wharf[operator]'\n")
    assert result.stdout == ""


def test_without_kopf_help_and_version_still_work(tmp_path):
    result = run_without_extra(tmp_path, "--version")
    assert result.returncode == 0 and result.stdout.startswith("wharf-operator "), result.stderr
    result = run_without_extra(tmp_path, "--help")
    assert result.returncode == 0 and "--kubeconfig" in result.stdout, result.stderr


def test_the_blocker_is_what_makes_the_difference(tmp_path):
    """Without the blocker the same interpreter imports kopf: the test above is not vacuous."""
    result = subprocess.run([sys.executable, "-c", "import kopf, wharf_operator.cli as c; print(c.MISSING_MODULE)"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "None", result.stderr
