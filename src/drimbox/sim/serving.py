"""A uvicorn server in a daemon thread of this process: how the simulators (DMP, PSC) run in
tests and in the demo. Owns start-up (with a clear error when the port is taken or TLS files are
unreadable), stop and restart on the same port; subclasses only say which app to serve."""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Self

import uvicorn


class ThreadedService:
    label = "service"
    error: type[Exception] = RuntimeError

    def __init__(self, host: str, port: int, start_timeout: float) -> None:
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def server_config(self) -> uvicorn.Config:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Self:
        if self.running:
            return self
        server = uvicorn.Server(self.server_config())
        name = f"{self.label.lower()}-sim-{self.port}"
        thread = threading.Thread(target=server.run, name=name, daemon=True)
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not server.started:
            if not thread.is_alive():
                self._server = self._thread = None
                raise self.error(
                    f"the {self.label} simulator did not start on {self.host}:{self.port} "
                    "(port taken? TLS files unreadable?)"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise self.error(
                    f"the {self.label} simulator did not start within {self.start_timeout} s"
                )
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop listening (open connections are closed); persistent state stays."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._server = self._thread = None

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
