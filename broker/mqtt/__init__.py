"""The MQTT wire protocol: packets, 5.0 properties and reason codes, the codec, topic rules."""
