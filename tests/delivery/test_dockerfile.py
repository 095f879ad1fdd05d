"""The Dockerfile: hadolint-clean, multi-stage, a configurable base, an unprivileged final stage."""

from __future__ import annotations

import re
import subprocess

from delivery_support import ROOT, tool

DOCKERFILE = ROOT / "Dockerfile"


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split into stages at each FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    result: list[list[str]] = [[]]
    for instruction in instructions:
        if instruction.upper().startswith("FROM ") and result[-1] and any(
                i.upper().startswith("FROM ") for i in result[-1]):
            result.append([])
        result[-1].append(instruction)
    return result


def test_hadolint_is_clean() -> None:
    proc = subprocess.run([tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_image_is_a_build_argument_defaulting_to_slim_python_311() -> None:
    first = stages()[0]
    assert first[0] == "ARG BASE_IMAGE=python:3.11-slim"
    froms = [i for stage in stages() for i in stage if i.startswith("FROM ")]
    assert froms == ["FROM ${BASE_IMAGE} AS build", "FROM ${BASE_IMAGE}"]


def test_final_stage_is_unprivileged_and_has_no_build_tools() -> None:
    final = stages()[-1]
    users = [i.split()[1] for i in final if i.startswith("USER ")]
    assert users, "the final stage sets no USER"
    assert users[-1] == "${WHARF_UID}:${WHARF_UID}"
    assert "ARG WHARF_UID=10001" in final
    # Only the virtualenv comes from the build stage; nothing is installed in the final stage.
    assert not any(re.search(r"\b(pip|apt-get|apt|gcc|make)\b", i) for i in final if i.startswith("RUN "))
    assert [i for i in final if "--from=" in i] == ["COPY --from=build /opt/wharf/venv /opt/wharf/venv"]
    assert final[-1] == 'CMD ["wharf-broker"]'
    assert not any(i.startswith("ENTRYPOINT") for i in final), "`docker run IMAGE wharf-operator` must work"


def test_build_stage_removes_pip_from_the_virtualenv() -> None:
    build = " ".join(stages()[0])
    assert "pip uninstall --yes pip" in build


def test_dockerignore_keeps_the_context_small() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!pyproject.toml", "!README.md", "!broker/", "!operator/"} <= set(lines)
    # No certificates or keys in the build context: the image must not carry the repository's test keys.
    assert not [line for line in lines if line.startswith("!") and "etc" in line], lines


def test_image_carries_no_key_and_has_a_private_state_directory() -> None:
    """The built-in config generates its PKI at first start into WHARF_HOME, writable only by the wharf user."""
    final = stages()[-1]
    copies = [i for i in final if i.startswith(("COPY", "ADD"))]
    assert copies == ["COPY --from=build /opt/wharf/venv /opt/wharf/venv"], copies
    assert not any(re.search(r"etc/certs|\.key\b|\.pem\b", i) for i in " ".join(stages()[0]).split("&&"))
    env = " ".join(i for i in final if i.startswith("ENV "))
    assert re.search(r"\bWHARF_HOME=/var/lib/wharf\b", env), env
    assert any('install -d -o "${WHARF_UID}" -g "${WHARF_UID}" -m 0700 /var/lib/wharf' in i
               for i in final if i.startswith("RUN ")), final
