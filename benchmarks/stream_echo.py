"""Server CPU per message: a grpc.aio unary call against a message on one bidi stream.

The evidence for the next step of issue 13 (BENCHMARKS.md, "Where the time
goes"): an echo server on uvloop, pinned to CPU 0, answers BatchRequests of
3 reads either as unary calls or as messages on one long-lived stream; a
sync client sends them one at a time; the server's CPU time is read from
/proc before and after. Run: python benchmarks/stream_echo.py [--calls N]
"""

from __future__ import annotations

import chordctl.grpcenv  # noqa: F401  (first: gRPC's environment, as a node has it)

import argparse
import os
import queue
import subprocess
import sys
import tempfile
import time

import grpc

from chordctl.pb import chord_pb2 as pb

SERVICE = "echo.Echo"


def serve(port_file: str) -> None:
    import asyncio
    try:
        import uvloop
    except ImportError:         # the nodes' loop where it is installed, asyncio's otherwise
        uvloop = None
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})

    async def unary(request, context):
        return pb.BatchReply()

    async def stream(requests, context):
        async for _request in requests:
            yield pb.BatchReply()

    async def run() -> None:
        server = grpc.aio.server()
        codec = {"request_deserializer": pb.BatchRequest.FromString,
                 "response_serializer": pb.BatchReply.SerializeToString}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
            "Unary": grpc.unary_unary_rpc_method_handler(unary, **codec),
            "Stream": grpc.stream_stream_rpc_method_handler(stream, **codec)}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        with open(port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.rename(port_file + ".tmp", port_file)
        await server.wait_for_termination()

    (uvloop.run if uvloop else asyncio.run)(run())


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=3000, help="calls per round [3000]")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each both shapes [3]")
    args = p.parse_args()
    port_file = os.path.join(tempfile.mkdtemp(prefix="stream-echo-"), "port")
    server = subprocess.Popen([sys.executable, __file__, "--serve", port_file])
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(port_file):
            if server.poll() is not None or time.monotonic() > deadline:
                print("stream_echo: the echo server did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        channel = grpc.insecure_channel("127.0.0.1:" + open(port_file).read())
        codec = {"request_serializer": pb.BatchRequest.SerializeToString,
                 "response_deserializer": pb.BatchReply.FromString}
        unary = channel.unary_unary(f"/{SERVICE}/Unary", **codec)
        stream = channel.stream_stream(f"/{SERVICE}/Stream", **codec)
        request = pb.BatchRequest(ops=[pb.Operation(op=2, key="123456789")] * 3)
        unary(request, timeout=10)
        for _ in range(args.rounds):
            c0, t0 = cpu_seconds(server.pid), time.perf_counter()
            for _ in range(args.calls):
                unary(request, timeout=10)
            took, used = time.perf_counter() - t0, cpu_seconds(server.pid) - c0
            print(f"unary calls:     {args.calls / took:7.0f}/s, server CPU "
                  f"{used / args.calls * 1e6:4.0f} us per call")
            outbox: queue.SimpleQueue = queue.SimpleQueue()
            replies = stream(iter(outbox.get, None))
            c0, t0 = cpu_seconds(server.pid), time.perf_counter()
            for _ in range(args.calls):
                outbox.put(request)
                next(replies)
            took, used = time.perf_counter() - t0, cpu_seconds(server.pid) - c0
            outbox.put(None)
            print(f"stream messages: {args.calls / took:7.0f}/s, server CPU "
                  f"{used / args.calls * 1e6:4.0f} us per message")
        channel.close()
        return 0
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        serve(sys.argv[2])
    else:
        sys.exit(main())
