"""A bare gRPC echo with chordctl's wire shapes, for the benchmark baseline.

Read returns at once (or, with --forward, asks the next echo and returns its
reply: the 2-hop shape); Batch returns one OK result per operation. No queue,
no log, no map: the ceiling that the real node is measured against.

    python -m chordctl.bench.echo --port P [--forward HOST:PORT] [--cpus LIST]
"""

from __future__ import annotations

import chordctl.grpcenv  # noqa: F401  (first: gRPC's environment, as a node has it)

import argparse
import asyncio
import signal

import grpc

from chordctl.core import eventloop
from chordctl.core.affinity import pin_process
from chordctl.cpulist import parse_cpulist
from chordctl.pb import chord_pb2 as pb
from chordctl.pb import chord_pb2_grpc as pb_grpc


class Echo(pb_grpc.KeyValueServicer):
    def __init__(self, forward: str | None):
        self.next = None
        if forward:
            self.channel = grpc.aio.insecure_channel(forward)
            self.next = pb_grpc.KeyValueStub(self.channel)

    async def Read(self, request, context):
        if self.next is not None:
            return await self.next.Read(request, timeout=context.time_remaining())
        return pb.Reply(value=b"x" * 32, node_index=0, node_id="0", message="echo")

    Update = Create = Delete = Read

    async def Batch(self, request, context):
        if self.next is not None:
            return await self.next.Batch(request, timeout=context.time_remaining())
        return pb.BatchReply(results=[pb.Result(code=0, value=o.value, node_id="0")
                                      for o in request.ops])


async def main(port: int, forward: str | None) -> None:
    server = grpc.aio.server()
    pb_grpc.add_KeyValueServicer_to_server(Echo(forward), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"echo on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--forward")
    ap.add_argument("--cpus", help="pin to these CPUs, like the node it stands for")
    a = ap.parse_args()
    if a.cpus:
        pin_process(parse_cpulist(a.cpus))
    eventloop.run(main(a.port, a.forward))   # the node's loop, for the same shape
