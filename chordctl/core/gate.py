"""The readiness gate: our services answer UNAVAILABLE until the node is ready.

The gRPC server starts before the node replays its snapshot and log, so that
the health service can say NOT_SERVING meanwhile (instead of a port that
accepts connections and answers nothing). gRPC cannot add services to a
running server, so KeyValue and Admin are registered from the start and this
interceptor refuses their calls until ``open()``; health and reflection pass
through. Once open it costs one attribute test per call.
"""

from __future__ import annotations

import grpc

GATED_PREFIX = "/chord.v1."


class ReadinessGate(grpc.aio.ServerInterceptor):
    def __init__(self, label: str):
        self.ready = False
        self.message = (f"{label} is recovering (replaying its snapshot and log), "
                        f"retry shortly")
        self._refuse = grpc.unary_unary_rpc_method_handler(self._refuse_call)

    def open(self) -> None:
        self.ready = True

    async def intercept_service(self, continuation, handler_call_details):
        if self.ready or not handler_call_details.method.startswith(GATED_PREFIX):
            return await continuation(handler_call_details)
        # Every chord.v1 method is unary-unary, so one refusing handler fits all.
        return self._refuse

    async def _refuse_call(self, request, context) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, self.message)
