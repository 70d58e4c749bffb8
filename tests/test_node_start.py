"""`node serve` failing to start says why in chordctl's words only."""

from __future__ import annotations

import os
import re
import socket

import yaml

from conftest import run_chordctl, write_config


def test_port_clash_says_what_happened_without_grpc_core_lines(tmp_path) -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        path = write_config(tmp_path, 1)
        with open(path) as f:
            doc = yaml.safe_load(f)
        doc["nodes"][0]["port"] = port
        with open(path, "w") as f:
            yaml.safe_dump(doc, f)
        p = run_chordctl("-c", path, "node", "serve", "--node", "0")
        err = p.stderr.decode()
        assert p.returncode == 1, err
        lines = [line for line in err.splitlines() if line.strip()]
        # It names the process that holds the port (this test's), so the
        # operator need not look for it (`ring show` only says the node is down).
        assert len(lines) == 1 and lines[0].startswith(
            f"chordctl: node: cannot listen on 127.0.0.1:{port}: the port is in use by "
            f"another process (pid {os.getpid()}: "), err
        assert lines[0].endswith("); stop it, or change nodes[0].port"), err
        assert not re.search(r"add_port|GRPC_VERBOSITY|^E\d{4}", err, re.M), err
    finally:
        holder.close()


def test_host_not_of_this_machine_is_named(tmp_path) -> None:
    path = write_config(tmp_path, 1)
    with open(path) as f:
        doc = yaml.safe_load(f)
    doc["nodes"][0]["host"] = "192.0.2.123"     # TEST-NET-1: never this machine's
    with open(path, "w") as f:
        yaml.safe_dump(doc, f)
    p = run_chordctl("-c", path, "node", "serve", "--node", "0")
    err = p.stderr.decode()
    assert p.returncode == 1, err
    assert "192.0.2.123 is not an address of this machine" in err and "nodes[0].host" in err
    assert "add_port" not in err and "Traceback" not in err, err


def test_grpc_aio_handing_an_event_to_a_closed_loop_prints_no_traceback(caplog) -> None:
    """A node that fails to start could end with a traceback after its own
    message: grpc.aio's poller handing a last event to a closed loop. That
    one race is logged at debug; every other loop error still shows."""
    import asyncio
    import logging

    from chordctl.core import eventloop

    class Handle:
        def __repr__(self) -> str:
            return "<Handle PollerCompletionQueue._handle_events()>"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.call_exception_handler({"message": "Exception in callback", "handle": Handle(),
                                     "exception": RuntimeError("Event loop is closed")})
        loop.call_exception_handler({"message": "other", "exception": RuntimeError("boom")})

    with caplog.at_level(logging.ERROR):
        eventloop.run(main())
    assert "boom" in caplog.text and "Event loop is closed" not in caplog.text
