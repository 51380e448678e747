"""gRPC's health service, with Watch streams that end when the server stops.

grpcio-health-checking's asyncio servicer sends NOT_SERVING to every Watch stream on
``enter_graceful_shutdown()`` and then keeps the stream open, waiting for the next
change, which never comes: the server's stop waited for every such stream until its
grace period ran out (a client-side health-checking channel holds one open for good).
Here Watch returns once it has sent the shutdown's NOT_SERVING, so the stop waits for
inference only.
"""

from __future__ import annotations

from typing import Any

from grpc_health.v1 import health, health_pb2


class HealthServicer(health.aio.HealthServicer):
    """:class:`grpc_health.v1.health.aio.HealthServicer` whose Watch ends on shutdown."""

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: Any) -> None:
        # The parent's loop, plus the return once the shutdown status is sent. Its
        # state (statuses, one condition per service, the shutdown flag) is the
        # parent's, so set() and enter_graceful_shutdown() work unchanged.
        condition = self._server_watchers[request.service]
        last = None
        try:
            async with condition:
                while True:
                    status = self._server_status.get(
                        request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                    )
                    if status != last:
                        await context.write(health_pb2.HealthCheckResponse(status=status))
                        last = status
                    if self._gracefully_shutting_down:
                        return
                    await condition.wait()
        finally:
            # A name no one serves: drop its condition, or every Watch of a new name
            # would leave one behind.
            if request.service not in self._server_status:
                self._server_watchers.pop(request.service, None)
