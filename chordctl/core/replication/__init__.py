"""Replication of arcs (``ring.replicas`` > 1) on PySyncObj's Raft.

- ``engine``: every Raft group of a node on one thread, journal made
  durable before a round's messages leave, our own apply, no pickle.
- ``codec``: PySyncObj's message dicts <-> chord.raft.v1 protobuf.
- ``exchange``: those messages on gRPC streams between the nodes' own ports.

The node's pipeline does not use it yet (issue 14 continues: the dispatcher
handing owned mutations to the engine, reads, routing to a group's leader,
the groups' snapshots from snap.X, ``ring show``).
"""
