"""The HTTP server under the app: uvicorn's h11 protocol with a deadline for a request's headers.

uvicorn closes a keep-alive connection that stays idle, but a connection that sends half a request
line or half its headers and then waits is held open forever: a few hundred of them (slowloris) hold
the server's sockets and memory. Here each connection has `header_timeout` seconds, from when it
opens or its last answer was sent, to deliver a whole request head; otherwise it is closed.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Optional

HEADER_TIMEOUT_S = 10.0
# The protocol with the default deadline by import path, for uvicorn's `--workers` (spawned processes
# import it; a class made in a function cannot be sent to them).
HEADER_DEADLINE_PROTOCOL = "irface.serve.http:HeaderDeadlineProtocol"


def __getattr__(name: str) -> Any:
    if name == "HeaderDeadlineProtocol":
        return _header_deadline_protocol(HEADER_TIMEOUT_S)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=None)
def _header_deadline_protocol(timeout: float) -> type:
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        header_timeout = timeout
        _header_task: Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self._cancel_header_deadline()
            super().connection_lost(exc)

        def _arm_header_deadline(self) -> None:
            self._cancel_header_deadline()
            if not self.transport.is_closing():
                self._header_task = self.loop.call_later(self.header_timeout, self._header_deadline_passed)

        def _cancel_header_deadline(self) -> None:
            if self._header_task is not None:
                self._header_task.cancel()
                self._header_task = None

        def _header_deadline_passed(self) -> None:
            self._header_task = None
            # A request whose head arrived has a cycle still running: it is being served, not late.
            waiting_for_head = self.cycle is None or self.cycle.response_complete
            if waiting_for_head and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


def server_config(app: Any, host: str, port: int, *, header_timeout: float = HEADER_TIMEOUT_S,
                  log_level: str = "warning") -> Any:
    """uvicorn's `Config` for `app` on `host:port` (port 0: a free one), with the header deadline."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, log_level=log_level,
                          http=_header_deadline_protocol(header_timeout))
