"""The CPU LLM server's HTTP front: uvicorn in front of llama.cpp's server, so the LLM hop on the
lab network behaves as vLLM's does, vLLM being what the lab's GPU node and most deployments run.

Measured here (tests/workload/test_stack.py): llama.cpp's server (cpp-httplib, via xllamacpp)
keeps a connection after a plain answer but closes it after a streamed (SSE) one, though its
headers said `Keep-Alive: timeout=5, max=100`; a client that reuses the connection at once gets
"server disconnected". vLLM's OpenAI server is uvicorn with a 5 s keep-alive
(`TIMEOUT_KEEP_ALIVE` in vllm/entrypoints/openai/api_server.py) for both. Without the front,
every streamed agent call was a new TCP connection, an artefact of the CPU backend.

The front passes requests and answers through byte for byte (SSE framing included); it speaks
to llama.cpp over loopback with a new connection per request, which is where the close goes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

KEEP_ALIVE_S = 5
"""vLLM's keep-alive for idle client connections (uvicorn's timeout_keep_alive)."""
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection", "host"}


def app(upstream: str) -> Starlette:
    """An ASGI app forwarding every request to `upstream` (llama.cpp's server on loopback)."""
    client = httpx.AsyncClient(base_url=upstream, timeout=None, limits=httpx.Limits(max_keepalive_connections=0))

    async def forward(request: Request) -> StreamingResponse | JSONResponse:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP]
        sent = client.build_request(
            request.method, request.url.path, params=request.query_params, headers=headers, content=await request.body()
        )
        try:
            answer = await client.send(sent, stream=True)
        except httpx.TransportError as exc:
            return JSONResponse({"error": f"llama.cpp's server did not answer: {exc!r}"}, status_code=503)
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(
            answer.aiter_raw(), status_code=answer.status_code, headers=kept, background=BackgroundTask(answer.aclose)
        )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return Starlette(
        routes=[Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"])], lifespan=lifespan
    )
