"""Helpers shared by the test suites: waiting (``eventually``, ``wait_until``) and a raw MQTT client speaking
bytes on the wire (``wire``)."""

from .waiting import NotReached, eventually, wait_until

__all__ = ["NotReached", "eventually", "wait_until"]
