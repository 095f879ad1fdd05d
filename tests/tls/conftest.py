"""Fixtures for the TLS tests (helpers live in ``wharf_tls_helpers.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from wharf_tls_helpers import Pki, private_copy  # noqa: E402


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def files(tmp_path, pki) -> Pki:
    return private_copy(pki, tmp_path)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "uvloop_too: run this test on asyncio's loop and on uvloop's")


def pytest_asyncio_loop_factories(config, item):
    """Tests marked ``uvloop_too`` run once per event loop implementation (the TLS paths differ)."""
    import asyncio

    factories = {"asyncio": asyncio.new_event_loop}
    if item.get_closest_marker("uvloop_too") is None:
        return factories
    try:
        import uvloop
    except ImportError:
        return factories
    factories["uvloop"] = uvloop.new_event_loop
    return factories
