"""An HTTP server (uvicorn) running inside the node's own event loop.

Owns the listening socket (bound before start, so that port 0 gives a free port whose number
`port` exposes), TLS when given an `ssl.SSLContext`, and a graceful stop. Uvicorn's signal
handling is disabled: the node owns signals. It must not build applications (`drimbox.web.app`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl as ssl_module
from collections.abc import Iterator, Mapping
from typing import Any

import uvicorn

from drimbox.http.limits import BodyLimit
from drimbox.http.rawbody import RawBodyH11Protocol


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The node installs its own handlers; uvicorn must not take SIGINT/SIGTERM over.
        yield


class HttpServer:
    """`await start()` binds and serves; `await stop()` finishes in-flight requests and closes."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        ssl: ssl_module.SSLContext | None = None,
        *,
        log_level: str = "warning",
        http_protocol: type[RawBodyH11Protocol] | None = None,
        header_timeout_s: float = RawBodyH11Protocol.header_timeout_s,
        max_body_bytes: int | None = None,
        path_body_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        # Bodies over the limit are refused while read (`BodyLimit`); None: no limit (tests).
        self.max_body_bytes = max_body_bytes
        self.path_body_limits = path_body_limits
        # A subclass per server: the header deadline is read by each connection's protocol.
        self.http_protocol = type(
            "ServerProtocol",
            (http_protocol or RawBodyH11Protocol,),
            {"header_timeout_s": header_timeout_s},
        )
        self.host = host
        self._requested_port = port
        self.ssl = ssl
        self.log_level = log_level
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self.port = port

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._requested_port))
        except OSError:
            sock.close()
            raise
        sock.listen(1024)
        sock.setblocking(False)
        self._socket = sock
        self.port = int(sock.getsockname()[1])
        app = self.app
        if self.max_body_bytes is not None:
            app = BodyLimit(app, max_bytes=self.max_body_bytes, path_limits=self.path_body_limits)
        config = uvicorn.Config(
            app,
            log_level=self.log_level,
            # uvicorn's messages go through the node's handler (`[log] format`), not its own.
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=10,
            proxy_headers=False,
            server_header=False,
            http=self.http_protocol,
        )
        config.load()
        if self.ssl is not None:
            config.ssl = self.ssl  # uvicorn builds its own from files; ours comes ready
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # start-up failed: raise its error
                raise RuntimeError("HTTP server stopped during start-up")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        try:
            await self._task
        finally:
            self._server = None
            self._task = None
            if self._socket is not None:
                self._socket.close()
                self._socket = None
