"""chordctl: a sharded, durable key-value database on a Chord ring, over gRPC.

The Python API (README, "Python API")::

    import chordctl

    with chordctl.connect("examples/configs/ring4.yaml") as db:
        db.create(42, b"hello")
        assert db.read(42).value == b"hello"

``connect`` returns a thread-safe ``Client``; ``chordctl.aio.connect`` is
its asyncio flavour. Every failure is a ``ChordError`` subclass importable
from here. Names load on first use, so ``import chordctl`` stays cheap and
the package's own modules import each other without cycles.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

# grpcio (1.7x-1.85) builds its core with fork support on while its Python
# layer documents it off (grpc/grpc#41455): a fork() in a process with live
# channels -- the CLI starting nodes, pexpect in the tests -- runs core's
# pre-fork handler, which can wait for good on a channel's poller. Nothing
# of ours uses a channel across a fork (children exec at once), so the
# handlers are turned off unless the environment says otherwise. Read by
# grpc when it is first imported, which is after this.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "connect": "chordctl.client",
    "Client": "chordctl.client",
    "Result": "chordctl.client",
    "ChordError": "chordctl.errors",
    "ConfigError": "chordctl.errors",
    "InvalidInputError": "chordctl.errors",
    "NotFoundError": "chordctl.errors",
    "AlreadyExistsError": "chordctl.errors",
    "UnavailableError": "chordctl.errors",
    "DeadlineExceededError": "chordctl.errors",
    "ResourceExhaustedError": "chordctl.errors",
    "InternalError": "chordctl.errors",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from chordctl.client import Client, Result, connect
    from chordctl.errors import (AlreadyExistsError, ChordError, ConfigError,
                                 DeadlineExceededError, InternalError, InvalidInputError,
                                 NotFoundError, ResourceExhaustedError, UnavailableError)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module == "chordctl.client":
        from chordctl import client as source
    elif module == "chordctl.errors":
        from chordctl import errors as source
    elif name == "aio":
        # import_module, not "from chordctl import aio": that asks this very
        # __getattr__ first and recursed forever.
        import importlib
        return importlib.import_module("chordctl.aio")
    else:
        raise AttributeError(f"module 'chordctl' has no attribute {name!r}")
    value = getattr(source, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
