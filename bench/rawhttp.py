"""A lean HTTP/1.1 keep-alive client for load generation on the service's own cores.

httpx spends about a core's worth of CPU to drive 600 small requests a second;
on a 2-core machine that is CPU taken from the service under test. This
client writes each request as one pre-formatted buffer and reads the reply
with `Content-Length` framing over a pool of persistent connections (one
per concurrent client), which is all a closed-loop load needs from a local
server that answers every request with a length (uvicorn does). It offers
the two calls the benchmarks make, `get` and `post`, returning `Reply`.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit


class RawHttpError(Exception):
    """The connection failed or the reply was not HTTP/1.1 with a Content-Length."""


@dataclass
class Reply:
    status_code: int
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


_Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class RawHttpClient:
    """`connections` keep-alive connections to `base_url`; a request takes a free one."""

    def __init__(
        self,
        base_url: str,
        connections: int,
        headers: dict[str, str] | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or url.hostname is None:
            raise ValueError(f"plain http://host:port URLs only, not {base_url!r}")
        self.host, self.port = url.hostname, url.port or 80
        self.timeout_s = timeout_s
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._fixed = f"Host: {self.host}:{self.port}\r\n{extra}".encode("latin-1")
        self._free: asyncio.Queue[_Connection | None] = asyncio.Queue()
        for _ in range(connections):
            self._free.put_nowait(None)  # opened on first use
        self._open: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> RawHttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for writer in self._open:
            writer.close()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
        self._open.clear()

    async def get(self, path: str) -> Reply:
        return await self.request("GET", path, b"", {})

    async def post(self, path: str, *, content: bytes, headers: dict[str, str]) -> Reply:
        return await self.request("POST", path, content, headers)

    async def request(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> Reply:
        head = f"{method} {path} HTTP/1.1\r\n".encode("latin-1") + self._fixed
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")
        head += f"Content-Length: {len(body)}\r\n\r\n".encode("latin-1")
        conn = await self._free.get()
        try:
            if conn is None:
                conn = await asyncio.open_connection(self.host, self.port)
                self._open.append(conn[1])
            reply = await asyncio.wait_for(self._exchange(conn, head + body), self.timeout_s)
        except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
            if conn is not None:
                conn[1].close()
            self._free.put_nowait(None)  # a fresh connection next time
            raise RawHttpError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            if conn is not None:
                conn[1].close()
            self._free.put_nowait(None)
            raise
        self._free.put_nowait(conn)
        return reply

    @staticmethod
    async def _exchange(conn: _Connection, request: bytes) -> Reply:
        reader, writer = conn
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise RawHttpError(f"not an HTTP/1.x status line: {lines[0]!r}")
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if length is None:
            raise RawHttpError("the reply has no Content-Length")
        return Reply(int(parts[1]), await reader.readexactly(length))
