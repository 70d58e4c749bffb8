"""The event loop a node (and the benchmark's echo) runs on: uvloop when installed.

Every request crosses the event loop twice besides gRPC's own work: the
reply comes back from the applier thread with ``call_soon_threadsafe`` and
then resumes the waiting handler. uvloop, libuv's loop for asyncio, does that
in C; on this machine it cuts the cost of the pipeline's hand-offs from about
65 to 28 us per request (BENCHMARKS.md). It installs on Linux and macOS;
elsewhere, or with ``CHORDCTL_EVENT_LOOP=asyncio``, asyncio's own loop runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from typing import Any

ENV = "CHORDCTL_EVENT_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")


def choice() -> str:
    """The loop to use: ``uvloop`` or ``asyncio``; ValueError for a bad setting."""
    wanted = (os.environ.get(ENV) or "auto").strip().lower()
    if wanted not in CHOICES:
        raise ValueError(f"{ENV}={wanted!r} is not one of {', '.join(CHOICES)}")
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise ValueError(f"{ENV}=uvloop, but uvloop is not installed "
                             f"(pip install uvloop; Linux and macOS only)") from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, Any], loop: str | None = None) -> Any:
    """asyncio.run(main) on the chosen loop."""
    loop = loop or choice()
    if loop == "uvloop":
        import uvloop
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_quiet(main))
    return asyncio.run(_quiet(main))


async def _quiet(main: Coroutine[Any, Any, Any]) -> Any:
    """*main* with one known grpc.aio shutdown race kept out of the user's
    stderr: its poller thread may hand a last event to an event loop that is
    already closed ("Event loop is closed" in
    PollerCompletionQueue._handle_events), which asyncio would print as a
    traceback after a node that failed to start has said why. Every other
    error goes to the loop's usual handler."""
    loop = asyncio.get_running_loop()

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed" \
                and "_handle_events" in repr(context.get("handle")):
            logging.getLogger("chordctl.server").debug("grpc: %s", context.get("message"))
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    return await main


def name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: what *loop* is."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
