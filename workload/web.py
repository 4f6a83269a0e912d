"""HTTP glue shared by every service: health endpoint, telemetry middleware, runner."""

from __future__ import annotations

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


def serve(app: Any, telemetry: Telemetry, host: str, port: int) -> None:
    """Run the app with uvicorn, its server side logged by the telemetry middleware."""
    uvicorn.run(
        TelemetryMiddleware(app, telemetry),
        host=host,
        port=port,
        log_level="warning",
        timeout_keep_alive=30,
        lifespan="on",
    )
