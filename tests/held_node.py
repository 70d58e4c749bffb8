"""A node with a stage that holds requests, a slow replay, or a raft journal
whose disk fills up: in-process, or as a real process (``python
tests/held_node.py CONFIG INDEX [--hold KEY:SECONDS] [--replay-delay SECONDS]
[--journal-fault TRIGGER]``, what NodeProc(hold=..., replay_delay=...,
journal_fault=...) runs).

Injected through ``NodeServer(config, index, node_class)``: the product's
request path holds no test hook.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import logging
import os
import sys
import time

from chordctl.core.node import Node


class HeldNode(Node):
    """Holds every list of requests for *hold_key* ``hold_seconds`` before F1
    (the receiver has counted it in flight by then), and sleeps
    ``replay_delay`` seconds before recovering (the node stays "recovering")."""

    hold_key: int | None = None
    hold_seconds = 0.0
    replay_delay = 0.0

    def submit(self, reqs) -> None:
        if self.hold_key is not None and any(r.key == self.hold_key for r in reqs):
            # Receivers submit on the event loop: hold without blocking it.
            asyncio.get_running_loop().call_later(self.hold_seconds, Node.submit, self, reqs)
            return
        Node.submit(self, reqs)

    def recover(self):
        if self.replay_delay > 0:
            time.sleep(self.replay_delay)   # in the executor thread, as the real replay
        return Node.recover(self)


def held(hold: str | None = None, replay_delay: float = 0.0) -> type[HeldNode]:
    """A HeldNode class; *hold* is "KEY:SECONDS"."""
    attrs: dict = {"replay_delay": float(replay_delay)}
    if hold:
        key, _, seconds = hold.partition(":")
        attrs.update(hold_key=int(key), hold_seconds=float(seconds))
    return type("Held", (HeldNode,), attrs)


class _FullDisk:
    """The os module as raftjournal sees it, but every write fails with
    ENOSPC once *trigger* exists (the journal's disk filled up)."""

    def __init__(self, trigger: str):
        self._trigger = trigger

    def __getattr__(self, name):
        return getattr(os, name)

    def write(self, fd, data):
        if os.path.exists(self._trigger):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)


def journal_fault(trigger: str) -> type:
    """A replicated node whose raft.journal writes fail (ENOSPC) once the
    file *trigger* exists; the rest of its storage keeps working."""
    from chordctl.core.replica import ReplicatedNode
    from chordctl.core.storage import raftjournal
    raftjournal.os = _FullDisk(trigger)
    return ReplicatedNode


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("index", type=int)
    parser.add_argument("--hold")
    parser.add_argument("--replay-delay", type=float, default=0.0)
    parser.add_argument("--journal-fault", metavar="TRIGGER")
    args = parser.parse_args(argv)
    from chordctl import config as config_mod
    from chordctl.core.server import serve
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s node-{args.index} %(threadName)s "
                               f"%(name)s: %(message)s")
    cfg = config_mod.load(args.config)
    node_class = journal_fault(args.journal_fault) if args.journal_fault else \
        held(args.hold, args.replay_delay)
    asyncio.run(serve(cfg, args.index, node_class))


if __name__ == "__main__":
    main(sys.argv[1:])
