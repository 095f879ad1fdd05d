"""A bounded slice of the fuzzing that ``scripts/fuzz`` does at scale: the whole kept corpus through both
targets, then a few thousand hypothesis-generated inputs (raw bytes, and valid packets with mutated tails).
The targets' own checks (``targets.py``) decide; a slice that finds a crash fails with the input."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .make_seeds import seeds
from .targets import ConnectHarness, codec

CORPUS = Path(__file__).resolve().parent / "corpus"
SLICE = settings(max_examples=3000, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def harness():
    harness = ConnectHarness(rebuild_every=500)
    yield harness
    harness.close()


def corpus(target: str) -> list[bytes]:
    files = sorted((CORPUS / target).iterdir())
    assert files, f"the {target} corpus is empty"
    return [path.read_bytes() for path in files]


def test_codec_corpus():
    for data in corpus("codec"):
        codec(data)


def test_connect_corpus(harness):
    for data in corpus("connect"):
        harness.run(data)


def test_the_harness_sees_internal_errors(harness, monkeypatch):
    """The connect target would catch a handler that blows up (so a green run means something)."""
    from wharf_broker import channel

    def broken(self, packet):
        raise KeyError("deliberately broken")
    monkeypatch.setattr(channel.Channel, "handle_pingreq", broken)
    connect = seeds()["connect"][1]
    with pytest.raises(AssertionError, match="internal error"):
        harness.run(connect + b"\xc0\x00")


_SEEDS = seeds()
mutated = st.tuples(st.sampled_from(_SEEDS["connect"]), st.integers(0, 400), st.binary(max_size=256)).map(
    lambda parts: parts[0][:parts[1]] + parts[2])


@SLICE
@given(st.one_of(st.binary(max_size=512), mutated))
def test_codec_slice(data):
    codec(data)


@SLICE
@given(data=st.one_of(st.binary(max_size=512), mutated))
def test_connect_slice(harness, data):
    harness.run(data)
