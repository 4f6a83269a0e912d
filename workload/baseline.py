"""The non-agentic baseline: a fixed chain gateway -> order service -> shipping service,
the last two reading the same PostgreSQL. No LLM; the same call graph for every task."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from workload.config import ServiceConfig
from workload.db import Database
from workload.tasks import ORDER_ID_PATTERN, Order, Shipment, TaskKind, expected_facts, render_answer
from workload.telemetry import Telemetry, describe_error, lab_http_client
from workload.web import error_response, health_endpoint, read_model


class BaselineTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    kind: TaskKind
    text: str
    order_id: str = Field(pattern=ORDER_ID_PATTERN)


async def _get_json(telemetry: Telemetry, client: httpx.AsyncClient, peer: str, url: str, op: str) -> dict[str, Any]:
    async with telemetry.call("service", peer, op):
        response = await client.get(url)
        response.raise_for_status()
        return response.json()


def build_gateway(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    order_url = config.peers["baseline-order"].rstrip("/")
    client = lab_http_client(config.timeouts.service_s)

    async def task(request: Request) -> JSONResponse:
        body = await read_model(request, BaselineTask)
        if isinstance(body, JSONResponse):
            return body
        try:
            data = await _get_json(
                telemetry, client, "baseline-order", f"{order_url}/orders/{body.order_id}", "GET /orders/{order_id}"
            )
            facts = expected_facts(
                body.kind, Order(**data["order"]), Shipment(**data["shipment"]) if data["shipment"] else None
            )
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            return error_response(502, f"baseline-order: {describe_error(exc)}", task_id=body.task_id)
        return JSONResponse(
            {
                "ok": True,
                "task_id": body.task_id,
                "answer": render_answer(body.kind, facts, body.order_id),
                "error": None,
            }
        )

    return Starlette(
        routes=[Route("/task", task, methods=["POST"]), Route("/healthz", health_endpoint("baseline-gateway", config))]
    )


def build_order_service(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    assert config.db_dsn is not None
    db = Database(config.db_dsn, telemetry, config.timeouts.db_s)
    shipping_url = config.peers["baseline-shipping"].rstrip("/")
    client = lab_http_client(config.timeouts.service_s)

    async def order(request: Request) -> JSONResponse:
        order_id = request.path_params["order_id"]
        row = await db.fetch_one("get_order", order_id)
        if row is None:
            return error_response(404, f"order {order_id} not found")
        data = await _get_json(
            telemetry, client, "baseline-shipping", f"{shipping_url}/shipments/{order_id}", "GET /shipments/{order_id}"
        )
        return JSONResponse({"order": row, "shipment": data["shipment"]})

    return Starlette(
        routes=[
            Route("/orders/{order_id}", order, methods=["GET"]),
            Route("/healthz", health_endpoint("baseline-order", config, db.problem)),
        ]
    )


def build_shipping_service(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    assert config.db_dsn is not None
    db = Database(config.db_dsn, telemetry, config.timeouts.db_s)

    async def shipment(request: Request) -> JSONResponse:
        return JSONResponse({"shipment": await db.fetch_one("get_shipment", request.path_params["order_id"])})

    return Starlette(
        routes=[
            Route("/shipments/{order_id}", shipment, methods=["GET"]),
            Route("/healthz", health_endpoint("baseline-shipping", config, db.problem)),
        ]
    )
