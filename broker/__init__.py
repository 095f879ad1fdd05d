"""Wharf: an MQTT 3.1.1 / 5.0 broker on asyncio."""

__version__ = "0.1.0"
