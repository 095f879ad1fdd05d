"""The packet codec: round-trips of every packet type in 3.1.1 and 5.0, incremental feeding, limits, and
random or mutated bytes never raising anything but FrameError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wharf_broker.mqtt import reason_codes as rc
from wharf_broker.mqtt.frame import (PINGRESP_BYTES, FrameError, Parser, encode, encode_ack, encode_connack,
                                     encode_disconnect, encode_puback, encode_pubcomp, encode_pubrec, encode_pubrel,
                                     encode_suback, encode_unsuback)
from wharf_broker.mqtt.packets import (AUTH, PUBACK, PUBCOMP, PUBREC, PUBREL, Auth, Connack, Connect,
                                       Disconnect, PingReq, PingResp, PubAck, Publish, Suback, SubOptions,
                                       Subscribe, Unsuback, Unsubscribe, Will)
from wharf_broker.mqtt.properties import PROPERTIES, STR, BIN, BYTE, U16, U32, VARINT, PAIR, WILL

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
topic_names = text.filter(lambda t: t and "+" not in t and "#" not in t)
packet_ids = st.integers(1, 65535)
binary = st.binary(max_size=40)

_VALUES = {
    BYTE: st.integers(0, 1), U16: st.integers(1, 65535), U32: st.integers(1, 2**32 - 1),
    VARINT: st.integers(1, 268435455), STR: text, BIN: binary,
}


def properties_for(packet_type: int):
    """Random valid property dicts for ``packet_type``."""
    fields = {}
    for _pid, (name, wtype, allowed) in PROPERTIES.items():
        if packet_type not in allowed:
            continue
        if wtype == PAIR:
            fields[name] = st.lists(st.tuples(text, text), min_size=1, max_size=3)
        elif name == "subscription_identifier":
            size = 1 if packet_type == 8 else 3
            fields[name] = st.lists(st.integers(1, 268435455), min_size=1, max_size=size)
        else:
            fields[name] = _VALUES[wtype]
    return st.fixed_dictionaries({}, optional=fields)


sub_options_v4 = st.builds(SubOptions, qos=st.integers(0, 2))
sub_options_v5 = st.builds(SubOptions, qos=st.integers(0, 2), no_local=st.booleans(),
                           retain_as_published=st.booleans(), retain_handling=st.integers(0, 2))


def packets(version: int):
    v5 = version == 5
    props = (lambda t: properties_for(t)) if v5 else (lambda t: st.just({}))
    reason = st.integers(0, 255) if v5 else st.just(0)
    will = st.builds(Will, topic=topic_names, payload=binary, qos=st.integers(0, 2), retain=st.booleans(),
                     properties=props(WILL))
    usernames = st.none() | text
    connect = st.builds(Connect, version=st.just(version), client_id=text, clean_start=st.booleans(),
                        keepalive=st.integers(0, 65535), username=usernames, password=st.none() | binary,
                        will=st.none() | will, properties=props(1))
    if not v5:  # 3.1.1: a password needs a user name
        connect = connect.filter(lambda c: c.password is None or c.username is not None)
    publish = st.builds(
        lambda topic, payload, qos, retain, dup, pid, properties: Publish(
            topic, payload, qos, retain, dup and qos > 0, pid if qos else None, properties or None),
        topic_names, binary, st.integers(0, 2), st.booleans(), st.booleans(), packet_ids, props(3))
    acks = st.builds(lambda t, pid, code, properties: PubAck(t, pid, code if v5 else 0, properties),
                     st.sampled_from([PUBACK, PUBREC, PUBREL, PUBCOMP]), packet_ids, reason, props(4))
    subscribe = st.builds(Subscribe, packet_id=packet_ids,
                          topics=st.lists(st.tuples(text.filter(bool), sub_options_v5 if v5 else sub_options_v4),
                                          min_size=1, max_size=4),
                          properties=props(8))
    suback = st.builds(Suback, packet_id=packet_ids, reason_codes=st.lists(st.integers(0, 255), min_size=1,
                                                                             max_size=4),
                       properties=props(9))
    unsubscribe = st.builds(Unsubscribe, packet_id=packet_ids, filters=st.lists(text, min_size=1, max_size=4),
                            properties=props(10))
    unsuback = st.builds(Unsuback, packet_id=packet_ids,
                         reason_codes=st.lists(st.integers(0, 255), min_size=1, max_size=4) if v5 else st.just([]),
                         properties=props(11))
    connack = st.builds(Connack, session_present=st.booleans(), reason_code=st.integers(0, 255),
                        properties=props(2))
    disconnect = st.builds(Disconnect, reason_code=reason, properties=props(14))
    choices = [connect, connack, publish, acks, subscribe, suback, unsubscribe, unsuback, disconnect,
               st.just(PingReq()), st.just(PingResp())]
    if v5:
        choices.append(st.builds(Auth, reason_code=st.integers(0, 255), properties=props(AUTH)))
    return st.one_of(choices)


def _parse_all(data: bytes, version: int) -> list:
    return Parser(version=version).feed(data)


@pytest.mark.parametrize("version", [4, 5])
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_packet_type(version, data):
    packet = data.draw(packets(version))
    wire = encode(packet, version)
    assert _parse_all(wire, version) == [packet]


@pytest.mark.parametrize("version", [4, 5])
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_stream_split_anywhere(version, data):
    """Packets fed in arbitrary chunks come out whole and in order."""
    sequence = data.draw(st.lists(packets(version), min_size=1, max_size=5))
    wire = b"".join(encode(p, version) for p in sequence)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    parser = Parser(version=version)
    out, last = [], 0
    for cut in cuts + [len(wire)]:
        out += parser.feed(wire[last:cut])
        last = cut
    assert out == sequence
    assert parser.buffered == 0


@pytest.mark.parametrize("version", [4, 5])
@settings(max_examples=700)
@given(blob=st.binary(max_size=300))
def test_random_bytes_raise_only_frame_error(version, blob):
    parser = Parser(version=version)
    try:
        parser.feed(blob)
    except FrameError as error:
        assert error.reason_code in (rc.MALFORMED_PACKET, rc.PROTOCOL_ERROR, rc.UNSUPPORTED_PROTOCOL_VERSION,
                                     rc.PACKET_TOO_LARGE)


@pytest.mark.parametrize("version", [4, 5])
@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_packets_raise_only_frame_error(version, data):
    """Valid packets with flipped, dropped or inserted bytes: decoded or FrameError, nothing else."""
    wire = bytearray(encode(data.draw(packets(version)), version))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(wire)))
        action = data.draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "flip" and position < len(wire):
            wire[position] ^= data.draw(st.integers(1, 255))
        elif action == "drop" and position < len(wire):
            del wire[position]
        else:
            wire.insert(position, data.draw(st.integers(0, 255)))
    try:
        Parser(version=version).feed(bytes(wire))
    except FrameError:
        pass


def test_connect_sets_parser_version():
    parser = Parser(version=4)
    packet = Connect(version=5, client_id="c", properties={"session_expiry_interval": 10})
    assert parser.feed(encode(packet, 5)) == [packet]
    assert parser.version == 5
    # 3.1 (MQIsdp) is accepted too.
    old = Connect(version=3, client_id="old")
    assert Parser().feed(encode(old, 3)) == [old]


def test_packet_too_large_is_refused_from_the_fixed_header_alone():
    parser = Parser(max_packet_size=100)
    # A PUBLISH announcing 1 MB: only the fixed header has arrived, and it is refused already.
    with pytest.raises(FrameError) as error:
        parser.feed(b"\x30\x80\x80\x40")
    assert error.value.reason_code == rc.PACKET_TOO_LARGE
    assert parser.buffered == 0


def test_remaining_length_of_five_bytes_is_malformed():
    with pytest.raises(FrameError) as error:
        Parser().feed(b"\x30\xff\xff\xff\xff\x01")
    assert error.value.reason_code == rc.MALFORMED_PACKET


def test_packets_before_a_bad_one_are_kept():
    good = encode(Publish("a/b", b"x"), 4)
    with pytest.raises(FrameError) as error:
        Parser().feed(good + b"\x00\x00")
    assert error.value.packets == [Publish("a/b", b"x")]


@pytest.mark.parametrize("wire, code", [
    (b"\x36\x05\x00\x01a\x00\x01", rc.MALFORMED_PACKET),      # QoS 3
    (b"\x62\x02\x00\x00", rc.MALFORMED_PACKET),               # PUBREL with packet id 0
    (b"\x60\x02\x00\x01", rc.MALFORMED_PACKET),               # PUBREL with wrong flags
    (b"\x80\x06\x00\x01\x00\x01a\x00", rc.MALFORMED_PACKET),  # SUBSCRIBE with wrong flags
    (b"\x82\x02\x00\x01", rc.PROTOCOL_ERROR),                 # SUBSCRIBE without filters
    (b"\x82\x06\x00\x01\x00\x01a\x03", rc.MALFORMED_PACKET),  # subscription QoS 3
    (b"\x30\x05\x00\x03a\xff\xfe", rc.MALFORMED_PACKET),      # topic not UTF-8
    (b"\x30\x05\x00\x03a\x00b", rc.MALFORMED_PACKET),         # topic with U+0000
    (b"\xc0\x01\x00", rc.MALFORMED_PACKET),                   # PINGREQ with a body
    (b"\xf0\x00", rc.MALFORMED_PACKET),                       # AUTH in 3.1.1
    (b"\x10\x0c\x00\x04MQTT\x06\x02\x00\x3c\x00\x00", rc.UNSUPPORTED_PROTOCOL_VERSION),
    (b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00", rc.MALFORMED_PACKET),  # reserved flag
    (b"\x10\x0c\x00\x04MQTT\x04\x42\x00\x3c\x00\x00", rc.MALFORMED_PACKET),  # password without user
    (b"\x10\x0c\x00\x04MQTT\x04\x12\x00\x3c\x00\x00", rc.MALFORMED_PACKET),  # will QoS without will
])
def test_malformed_packets(wire, code):
    with pytest.raises(FrameError) as error:
        Parser().feed(wire)
    assert error.value.reason_code == code


def test_v5_property_rules():
    # Property not allowed in a PUBLISH (session expiry), duplicated property, unknown property.
    for props in (b"\x05\x11\x00\x00\x00\x01", b"\x04\x23\x00\x01\x23", b"\x02\x7f\x00"):
        wire = b"\x00\x01t" + props
        with pytest.raises(FrameError) as error:
            Parser(version=5).feed(bytes((0x30, len(wire))) + wire)
        assert error.value.reason_code in (rc.PROTOCOL_ERROR, rc.MALFORMED_PACKET)


@given(packet_id=packet_ids)
def test_plain_acknowledgements_are_the_general_encoding(packet_id):
    """The hot path's PUBACK/PUBREC/PUBREL/PUBCOMP encoders write what ``encode`` writes, in both versions."""
    for kind, encoder in ((PUBACK, encode_puback), (PUBREC, encode_pubrec), (PUBREL, encode_pubrel),
                          (PUBCOMP, encode_pubcomp)):
        for version in (4, 5):
            assert encoder(packet_id) == encode(PubAck(kind, packet_id), version) == encode_ack(
                kind, packet_id, version=version)
            (parsed,) = _parse_all(encoder(packet_id), version)
            assert (parsed.type, parsed.packet_id, parsed.reason_code) == (kind, packet_id, 0)


def test_acknowledgements_with_reason_codes_round_trip():
    wire = encode_ack(PUBREC, 7, rc.NO_MATCHING_SUBSCRIBERS, {"reason_string": "nobody"})
    (parsed,) = _parse_all(wire, 5)
    assert (parsed.type, parsed.packet_id, parsed.reason_code, parsed.properties) == (
        PUBREC, 7, rc.NO_MATCHING_SUBSCRIBERS, {"reason_string": "nobody"})
    assert encode_ack(PUBREC, 7, rc.NO_MATCHING_SUBSCRIBERS, version=4) == b"\x50\x02\x00\x07"
    assert encode_connack(True, rc.SUCCESS, {"maximum_qos": 1}, 5) == encode(Connack(True, 0, {"maximum_qos": 1}), 5)
    assert encode_connack(False, 5, None, 4) == b"\x20\x02\x00\x05"
    assert encode_suback(9, [0, 1, 0x80], None, 4) == b"\x90\x05\x00\x09\x00\x01\x80"
    assert encode_unsuback(9, [0, 0x11], None, 4) == b"\xb0\x02\x00\x09"
    assert encode_unsuback(9, [0, 0x11], None, 5) == b"\xb0\x05\x00\x09\x00\x00\x11"
    assert encode_disconnect(rc.SESSION_TAKEN_OVER, None, 4) == b"\xe0\x00"
    assert encode_disconnect(rc.SESSION_TAKEN_OVER, None, 5) == b"\xe0\x02\x8e\x00"
    assert PINGRESP_BYTES == encode(PingResp(), 4)
