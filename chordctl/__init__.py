"""chordctl: a sharded, durable key-value database on a Chord ring, over gRPC."""

__version__ = "0.1.0"
