"""HTTP glue shared by every service: health endpoint, telemetry middleware, runner."""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import uvicorn
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from workload.config import ServiceConfig
from workload.telemetry import Telemetry, TelemetryMiddleware

ReadyCheck = Callable[[], Awaitable[str | None]]


def health_endpoint(
    service: str, config: ServiceConfig, ready: ReadyCheck | None = None
) -> Callable[[Request], Awaitable[JSONResponse]]:
    """GET /healthz: 200 with JSON when ready, 503 naming what is missing otherwise."""
    started = time.time()

    async def healthz(_: Request) -> JSONResponse:
        problem = await ready() if ready else None
        body = {
            "service": service,
            "node": config.node,
            "ready": problem is None,
            "problem": problem,
            "uptime_s": round(time.time() - started, 1),
        }
        return JSONResponse(body, status_code=200 if problem is None else 503)

    return healthz


M = TypeVar("M", bound=BaseModel)


async def read_model(request: Request, model: type[M]) -> M | JSONResponse:
    """The request body as `model`, or a 400 response naming the first bad field."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        return error_response(400, f"malformed task: {where}: {err['msg']}")


def error_response(status: int, error: str, **fields: Any) -> JSONResponse:
    return JSONResponse({"ok": False, "error": error, **fields}, status_code=status)


PUBLIC_PATHS = ("/healthz", "/.well-known/agent-card.json")
"""What a caller may GET without the lab's token: the health endpoint (deploy and preflight ask it)
and the Agent Card, which A2A clients read before they know how to authenticate."""


class BearerAuth:
    """ASGI middleware: a request without `Authorization: Bearer <token>` (RFC 6750) gets 401 and
    never reaches the app; PUBLIC_PATHS stay open to GET. As vLLM's --api-key, llama.cpp's
    --api-key and the MCP authorization spec answer a request without a valid token."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (scope["method"] == "GET" and scope["path"] in PUBLIC_PATHS):
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k.lower() == b"authorization"), b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        # RFC 6750 3.1: no error code for a request that sent no credentials
        challenge = 'Bearer realm="lab", error="invalid_token"' if given else 'Bearer realm="lab"'
        response = JSONResponse(
            {"ok": False, "error": "this lab's services want its token: Authorization: Bearer <token> (`lab status`)"},
            status_code=401,
            headers={"www-authenticate": challenge},
        )
        await response(scope, receive, send)


def serve(app: Any, telemetry: Telemetry, host: str, port: int, token: str | None = None) -> None:
    """Run the app with uvicorn, its server side logged by the telemetry middleware; with `token`, only
    callers that send it get past BearerAuth."""
    uvicorn.run(
        TelemetryMiddleware(BearerAuth(app, token) if token else app, telemetry),
        host=host,
        port=port,
        log_level="warning",
        timeout_keep_alive=30,
        lifespan="on",
    )
