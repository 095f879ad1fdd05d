import pytest

from bench import mqtt_wire


def test_connect_packet_matches_the_3_1_1_layout():
    packet = mqtt_wire.connect_packet("abc", keepalive=60)
    assert packet == b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc"


def test_long_client_ids_use_a_multi_byte_remaining_length():
    packet = mqtt_wire.connect_packet("x" * 300)
    assert packet[1:3] == bytes([(312 % 128) | 0x80, 312 // 128])
    assert len(packet) == 3 + 312


def test_connack_must_accept():
    mqtt_wire.check_connack(b"\x20\x02\x00\x00")
    with pytest.raises(mqtt_wire.ProtocolError, match="return code 5"):
        mqtt_wire.check_connack(b"\x20\x02\x00\x05")
    with pytest.raises(mqtt_wire.ProtocolError, match="expected CONNACK"):
        mqtt_wire.check_connack(b"\x30\x02\x00\x00")


def test_keepalive_out_of_range_is_refused():
    with pytest.raises(ValueError):
        mqtt_wire.connect_packet("a", keepalive=70000)
