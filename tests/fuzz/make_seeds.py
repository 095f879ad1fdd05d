"""Writes the seed inputs of tests/fuzz/corpus (valid packets of every kind, both versions, plus PROXY-less
edge cases); run once when the codec learns new packets. The fuzzer's discoveries are merged next to them."""

from __future__ import annotations

import hashlib
from pathlib import Path

from wharf_broker.mqtt.frame import encode
from wharf_broker.mqtt.packets import (
    Auth,
    Connect,
    Disconnect,
    PingReq,
    PubAck,
    Publish,
    SubOptions,
    Subscribe,
    Unsubscribe,
    Will,
)

CORPUS = Path(__file__).resolve().parent / "corpus"


def seeds() -> dict[str, list[bytes]]:
    connects = []
    for version in (3, 4, 5):
        props = {"session_expiry_interval": 60, "receive_maximum": 10, "topic_alias_maximum": 4,
                 "user_property": [("k", "v")]} if version == 5 else None
        will = Will("will/t", b"bye", 1, True, {"will_delay_interval": 5} if version == 5 else {})
        connects.append(encode(Connect(version=version, client_id="c1"), version))
        connects.append(encode(Connect(version=version, client_id="c2", clean_start=False, username="u",
                                       password=b"p", will=will, properties=props), version))
    after = []
    for version in (4, 5):
        props = {"topic_alias": 1, "message_expiry_interval": 10, "content_type": "x"} if version == 5 else None
        after += [
            encode(Publish("a/b", b"payload", 0, False, False, None, props), version),
            encode(Publish("a/b", b"payload", 1, True, False, 7, None), version),
            encode(Publish("a/b", b"payload", 2, False, True, 8, None), version),
            encode(Subscribe(1, [("a/+", SubOptions(1)), ("$share/g/b/#", SubOptions(2))],
                             {"subscription_identifier": [3]} if version == 5 else None), version),
            encode(Unsubscribe(2, ["a/+"]), version),
            encode(PubAck(4, 7), version), encode(PubAck(6, 8), version),
            encode(PingReq(), version), encode(Disconnect(0, None), version),
        ]
        if version == 5:
            after.append(encode(Auth(0x18, {"authentication_method": "x"}), 5))
    connect_inputs = list(connects)
    for connect in connects:
        connect_inputs.append(connect + b"".join(after))
    return {"codec": connects + after, "connect": connect_inputs}


def main() -> None:
    for target, inputs in seeds().items():
        folder = CORPUS / target
        folder.mkdir(parents=True, exist_ok=True)
        for data in inputs:
            (folder / ("seed-" + hashlib.sha1(data).hexdigest())).write_bytes(data)


if __name__ == "__main__":
    main()
