"""Wharf's Kubernetes operator (kopf): MQTTBroker resources and certificate rotation without restarts."""

__version__ = "0.1.0"
