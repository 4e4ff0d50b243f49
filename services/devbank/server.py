"""uvicorn's server, able to stop and restart listening while the process lives on.

``unavailable_for_s`` must look like a bank that is down: connection refused, not an
HTTP error. So the listening socket is really closed (and idle keep-alive
connections shut, as uvicorn does on shutdown), then a new one is bound to the same
address. Relies on uvicorn's ``servers`` and ``server_state`` (pinned in pyproject).
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn


class ReopeningServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._address: tuple[str, int] | None = None

    async def stop_listening(self) -> None:
        for server in self.servers:
            for sock in server.sockets:
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    host, port = sock.getsockname()[:2]
                    self._address = (host, port)
            server.close()  # the listening socket: new connections are refused
        # Connections kept alive would still reach us: close the idle ones now, the
        # busy ones once their answer is out.
        for connection in list(self.server_state.connections):
            connection.shutdown()

    async def start_listening(self) -> None:
        if self.should_exit:
            return
        config = self.config
        host, port = self._address or (config.host, config.port)

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol, host=host, port=port, backlog=config.backlog)
        self.servers = [server]
