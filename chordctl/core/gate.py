"""The readiness gate: our services answer UNAVAILABLE until the node is ready.

The gRPC server starts before the node replays its snapshot and log, so that
the health service can say NOT_SERVING meanwhile (instead of a port that
accepts connections and answers nothing). gRPC cannot add services to a
running server, so KeyValue and Admin are registered from the start and check
this gate first; health and reflection are not gated. A flag test per call,
not a server interceptor: an aio interceptor costs ~8% of a unary call.
"""

from __future__ import annotations

import grpc


class ReadinessGate:
    def __init__(self, label: str):
        self.ready = False
        self.message = (f"{label} is recovering (replaying its snapshot and log), "
                        f"retry shortly")

    def open(self) -> None:
        self.ready = True

    async def refuse(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, self.message)
