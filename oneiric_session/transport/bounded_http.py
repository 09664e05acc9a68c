"""An httpx client whose responses are cut at a size limit: one answer from a server is bounded.

It is the httpx the installed SDK speaks (2.x: httpx2, 1.x: httpx), from `mcp_compat`.

The SDK's streamable HTTP client reads a JSON answer whole (`response.aread()`), so a server that
sends a body that never ends would grow our memory without limit. Every response body read
through this client counts its bytes; past `max_bytes` the read fails with `AnswerTooLargeError`
(a `StreamError`, which the SDK turns into an error answer for the waiting call at once) and the
failure is kept on the `BoundedHttp` object, so the caller can name the server and the limit.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.shared._httpx_utils import MCP_DEFAULT_SSE_READ_TIMEOUT, MCP_DEFAULT_TIMEOUT

from oneiric_session import mcp_compat
from oneiric_session.mcp_compat import httpx

__all__ = ["AnswerTooLargeError", "BoundedHttp"]


class AnswerTooLargeError(httpx.StreamError):  # type: ignore[misc, unused-ignore]  # mypy on 1.x: httpx is Any there
    """One HTTP response body from the server went past the size limit."""


class _QuietTooLarge(logging.Filter):
    """The SDK logs a failed JSON read with its traceback: ours is expected and said once by us."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, AnswerTooLargeError)


_FILTER = _QuietTooLarge()
logging.getLogger("mcp.client.streamable_http").addFilter(_FILTER)


class _BoundedStream(httpx.AsyncByteStream):  # type: ignore[misc, unused-ignore]  # mypy on 1.x: httpx is Any there
    def __init__(self, inner: httpx.AsyncByteStream, owner: BoundedHttp) -> None:
        self._inner = inner
        self._owner = owner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._owner.max_bytes:
                raise self._owner.too_large()
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _BoundedTransport(httpx.AsyncBaseTransport):  # type: ignore[misc, unused-ignore]  # mypy on 1.x: httpx is Any there
    def __init__(self, inner: httpx.AsyncBaseTransport, owner: BoundedHttp) -> None:
        self._inner = inner
        self._owner = owner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_BoundedStream(response.stream, self._owner),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class BoundedHttp:
    """Makes the httpx client for one connection and remembers whether an answer was too large."""

    def __init__(self, describe: str, max_bytes: int) -> None:
        self.describe = describe
        self.max_bytes = max_bytes
        self.failure: str | None = None

    def too_large(self) -> AnswerTooLargeError:
        self.failure = f"the server {self.describe} sent an answer larger than {self.max_bytes} bytes"
        return AnswerTooLargeError(self.failure)

    @asynccontextmanager
    async def transport(self, url: str) -> AsyncIterator[tuple[Any, Any]]:
        """The SDK's streamable HTTP transport to `url` over a bounded client (closed with it)."""
        async with self.client() as client, mcp_compat.http_transport(url, http_client=client) as streams:
            yield streams

    def client(self) -> httpx.AsyncClient:
        """A client like the SDK's default one (its timeouts), with every response body bounded."""
        return httpx.AsyncClient(
            timeout=httpx.Timeout(MCP_DEFAULT_TIMEOUT, read=MCP_DEFAULT_SSE_READ_TIMEOUT),
            transport=_BoundedTransport(httpx.AsyncHTTPTransport(), self),
        )
