"""Clustering on NATS: several broker nodes behave as one broker (see ``docs/cluster.md``).

Nothing here is imported unless ``cluster.enable`` is set: a standalone broker needs no NATS client.
"""

from .node import ClusterBroker

__all__ = ["ClusterBroker"]
