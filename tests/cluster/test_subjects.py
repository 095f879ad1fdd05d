"""The topic/filter to NATS subject mapping and the message envelope."""

from __future__ import annotations

import re

import pytest
from wharf_broker.cluster.subjects import (
    decode_message,
    encode_message,
    filter_subjects,
    from_kv_key,
    kv_key,
    topic_subject,
)
from wharf_broker.mqtt.topic import matches
from wharf_broker.router import Message

NATS_TOKEN = re.compile(r"^[!-~]+$")  # printable ASCII, no space


def nats_matches(subject: str, pattern: str) -> bool:
    """NATS subject matching (``*`` one token, ``>`` the rest)."""
    tokens, wanted = subject.split("."), pattern.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or (token != "*" and token != tokens[index]):
            return False
    return len(tokens) == len(wanted)


TOPICS = ["a", "a/b", "a/b/c", "a.b", "*", ">", "a/*/c", "", "/", "a//b", "sp ace/x", "ünï/code", "%41", "%_",
          "$SYS/broker", "tab\there", "a/b.c/>"]
FILTERS = ["#", "a/#", "a/+", "+/b", "a/+/c", "+", "a.b", "*", "/", "+/+", "a//b", "$SYS/#", "%_", "a/b.c/>"]


@pytest.mark.parametrize("topic", TOPICS)
def test_subject_tokens_are_valid_and_distinct(topic):
    subject = topic_subject(topic, 1)
    assert all(NATS_TOKEN.match(token) for token in subject.split("."))
    assert not any(token in ("*", ">") for token in subject.split(".")[2:])
    others = [t for t in TOPICS if t != topic]
    assert subject not in {topic_subject(other, 1) for other in others}


@pytest.mark.parametrize("topic_filter", FILTERS)
def test_filter_subjects_cover_exactly_what_the_filter_matches(topic_filter):
    # NATS may deliver a little more only for $-topics (checked again by the receiving node), never less.
    patterns = filter_subjects(topic_filter)
    for topic in TOPICS:
        routed = any(nats_matches(topic_subject(topic, qos), p) for p in patterns for qos in (0, 1))
        if matches(topic, topic_filter):
            assert routed, (topic, topic_filter, patterns)
        elif not topic.startswith("$"):
            assert not routed, (topic, topic_filter, patterns)


def test_qos_kinds_share_a_filter_but_only_durable_ones_reach_the_stream():
    assert topic_subject("a/b", 0) == "wharf.m0.a.b"
    assert topic_subject("a/b", 2) == "wharf.m1.a.b"
    assert filter_subjects("a/#") == ["wharf.*.a", "wharf.*.a.>"]


@pytest.mark.parametrize("text", ["client-1", "ünï côdé", "a/b.c", "", "$share/g/x", "x" * 300])
def test_kv_keys_round_trip_and_are_legal(text):
    key = kv_key(text)
    assert re.fullmatch(r"[-/_=.a-zA-Z0-9]+", key)
    assert from_kv_key(key) == text


def test_envelope_round_trip_keeps_everything_a_subscriber_sees():
    properties = {"content_type": "text/plain", "correlation_data": b"\x00\xff", "response_topic": "r/1",
                  "payload_format_indicator": 1, "user_property": [("k", "v"), ("k", "w")]}
    message = Message("t/ü", b"\x00payload\xff", 2, True, properties, "pub-1", expires_at=100.0)
    data = encode_message(message, "node#1", 42, now=90.0)
    copy, origin, seq = decode_message(data, now=1000.0)
    assert (origin, seq) == ("node#1", 42)
    assert (copy.topic, copy.payload, copy.qos, copy.retain, copy.publisher) == \
        ("t/ü", b"\x00payload\xff", 2, True, "pub-1")
    assert copy.properties == properties
    assert 1009.0 < copy.expires_at <= 1010.5  # 10 s left, on the receiver's clock


@pytest.mark.parametrize("data", [b"", b"\x00\x00", b"\x00\x00\x00\x09{}", b"\x00\x00\x00\x02{}", b"\x00\x00\x00\x01x"])
def test_malformed_envelopes_are_refused(data):
    with pytest.raises(ValueError):
        decode_message(data, 0.0)
