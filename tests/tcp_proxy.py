"""A TCP proxy between the worker and PostgreSQL that tests can break on purpose.

Modes (``TcpProxy.set_mode``):
- PASS: bytes flow both ways.
- SILENT: bytes vanish both ways, on live links and new ones (a NAT that forgot the
  connection); nothing is reset, nothing answers. A side that closes its end still
  closes the other (so a client that gives up frees its server backend).
- REFUSE: the listening socket is closed (connection refused) and every live link is reset.
And at any time ``reset(fraction)`` resets that share of the live links (RST both ways).

It runs its own asyncio loop in a thread, so a test can drive it while other
processes (or the test's own loop) use it.

    with TcpProxy(5432) as proxy:
        url = f"postgresql://postgres@127.0.0.1:{proxy.port}/db"
        proxy.set_mode(Mode.REFUSE) ... proxy.set_mode(Mode.PASS)
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import socket
import struct
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Mode(enum.Enum):
    PASS = "pass"
    SILENT = "silent"
    REFUSE = "refuse"


class _Link:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]

    def reset(self) -> None:
        """Close both sides with an RST (SO_LINGER 0), as a broken network would."""
        for writer in self.writers():
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()

    def close(self) -> None:
        for writer in self.writers():
            writer.transport.close()


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode = Mode.PASS
        self.links: set[_Link] = set()
        self.resets = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)

    # ---- driving it from the test's thread ----------------------------------------

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._call(self._listen)
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def set_mode(self, mode: Mode) -> None:
        self._call(lambda: self._set_mode(mode))

    def reset(self, fraction: float = 1.0) -> int:
        """Reset `fraction` of the live links (chosen at random); returns how many."""
        return self._call(lambda: self._reset(fraction))

    @property
    def live_links(self) -> int:
        return len(self.links)

    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        async def run() -> T:
            return await fn()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    # ---- in the proxy's loop --------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _set_mode(self, mode: Mode) -> None:
        if mode is Mode.REFUSE and self._server is not None:
            self._server.close()
            self._server = None
            await self._reset(1.0)
        elif mode is not Mode.REFUSE and self._server is None:
            await self._listen()
        self.mode = mode

    async def _reset(self, fraction: float) -> int:
        chosen = [link for link in list(self.links) if random.random() < fraction]
        for link in chosen:
            link.reset()
            self.links.discard(link)
        self.resets += len(chosen)
        return len(chosen)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            link.close()
        self.links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self.links.add(link)
        try:
            if self.mode is Mode.SILENT:
                await self._swallow(reader)
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            except OSError:
                link.reset()
                return
            link.upstream = up_writer
            pumps = [asyncio.create_task(self._pump(reader, up_writer)),
                     asyncio.create_task(self._pump(up_reader, writer))]
            link.tasks = pumps
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass
        finally:
            self.links.discard(link)
            link.close()

    async def _swallow(self, reader: asyncio.StreamReader) -> None:
        while await reader.read(65536):
            pass

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if self.mode is Mode.SILENT:
                    continue  # the bytes vanish; the link stays up
                writer.write(data)
                await writer.drain()


def pg_connections(admin_url: str, dbname: str) -> int:
    """Server connections to `dbname` right now (every client's: the test's own database only)."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (dbname,)).fetchone()
    return int(row[0]) if row else 0


__all__ = ["Mode", "TcpProxy", "pg_connections"]
