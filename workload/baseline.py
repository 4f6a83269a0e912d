"""The non-agentic baseline: no LLM, and for each task the REST calls of its kind's minimal tool
plan (tasks.KINDS), fixed in code. The gateway walks the plan step by step, one call for each MCP
tool call the plan makes (config.TOOL_ENDPOINTS), the calls of one step at once:

- get_order, get_customer: the order service, `GET /orders/{order_id}`, `GET /customers/{customer_id}`
- get_shipment: the shipping service, `GET /shipments/{order_id}`
- track_parcel, carrier_status: tool-synth, `GET /parcels/{tracking_no}`, `GET /carriers/{carrier}`,
  the very work of its MCP tools

Per kind: order_status, order_total: an order; compare_totals: both orders at once;
customer_city: the order, then its customer; shipment_eta: the shipment; parcel_hub: the shipment,
then its parcel; delivery_risk: the shipment, then its parcel and its carrier at once. The order
and shipping services read PostgreSQL, the same queries as tool-db.

The gateway makes every call itself, as an agent makes every tool call of its plan, so the baseline
reads the same records and asks for the same synthetic work; what differs is the LLM and MCP. It
answers with the fixed sentence (tasks.render_answer) of the facts in what the chain returned
(tasks.expected_facts)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from workload.config import REQUIRED_PEERS, TOOL_ENDPOINTS, ServiceConfig, bearer, endpoints_of
from workload.db import Database
from workload.tasks import KINDS, ORDER_ID_PATTERN, Customer, Order, Shipment, TaskKind, expected_facts, render_answer
from workload.telemetry import Telemetry, describe_error, lab_http_client
from workload.web import error_response, health_endpoint, read_model

Endpoint = Callable[[Request], Awaitable[JSONResponse]]


class BaselineTask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    kind: TaskKind
    text: str
    order_id: str = Field(pattern=ORDER_ID_PATTERN)
    other_order_id: str | None = Field(None, pattern=ORDER_ID_PATTERN)

    @model_validator(mode="after")
    def _other_order_only_to_compare(self) -> BaselineTask:
        if (self.other_order_id is None) == (self.kind == "compare_totals"):
            raise ValueError("other_order_id is needed for compare_totals, and only there")
        return self

    @property
    def order_ids(self) -> list[str]:
        return [self.order_id] if self.other_order_id is None else [self.order_id, self.other_order_id]


class PeerError(Exception):
    """A call to a peer failed; the message names the peer."""


@dataclass
class Reads:
    """What the chain has read for one task; a step's calls take their arguments from earlier steps'."""

    task: BaselineTask
    orders: dict[str, Order] = field(default_factory=dict)
    shipment: Shipment | None = None
    customer: Customer | None = None

    def arguments(self, tool: str) -> list[dict[str, str]]:
        """The MCP tool's arguments for each of its calls: one call, or one per order to compare."""
        if tool == "get_order":
            return [{"order_id": order_id} for order_id in self.task.order_ids]
        if tool == "get_shipment":
            return [{"order_id": self.task.order_id}]
        if tool == "get_customer":
            return [{"customer_id": self.orders[self.task.order_id].customer_id}]
        if tool == "track_parcel":
            return [{"tracking_no": self._shipment().tracking_no}]
        if tool == "carrier_status":
            return [{"carrier": self._shipment().carrier}]
        raise ValueError(f"no REST call stands for tool {tool}")

    def _shipment(self) -> Shipment:
        if self.shipment is None:
            raise ValueError("tool-synth's tools need the shipment an earlier step reads")
        return self.shipment

    def keep(self, tool: str, record: dict[str, Any]) -> None:
        """Keep a call's record. Tool-synth's reports are not kept: their hubs follow from the shipment
        (tasks.hub_of), as an agent's answer is checked."""
        if tool == "get_order":
            self.orders[record["order_id"]] = Order(**record)
        elif tool == "get_customer":
            self.customer = Customer(**record)
        elif tool == "get_shipment":
            self.shipment = Shipment(**record)

    def facts(self) -> dict[str, str]:
        orders = [self.orders[order_id] for order_id in self.task.order_ids if order_id in self.orders]
        return expected_facts(self.task.kind, orders, self.shipment, self.customer)


def build_gateway(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    client = lab_http_client(config.timeouts.service_s, headers=bearer(config.api_token))
    bases = {peer: config.rest_url(peer) for peer in REQUIRED_PEERS["baseline-gateway"]}

    async def call(reads: Reads, tool: str, arguments: dict[str, str]) -> None:
        peer, path = TOOL_ENDPOINTS[tool]
        url = bases[peer] + path.format_map({name: quote(value, safe="") for name, value in arguments.items()})
        try:
            async with telemetry.call("service", peer, f"GET {path}"):
                response = await client.get(url)
                response.raise_for_status()
            reads.keep(tool, response.json())
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            raise PeerError(f"{peer}: {describe_error(exc)}") from exc

    async def read(task: BaselineTask) -> Reads:
        reads = Reads(task)
        for step in KINDS[task.kind].plan:
            await asyncio.gather(*(call(reads, tool, args) for tool in step for args in reads.arguments(tool)))
        return reads

    async def answer(request: Request) -> JSONResponse:
        body = await read_model(request, BaselineTask)
        if isinstance(body, JSONResponse):
            return body
        try:
            facts = (await read(body)).facts()
        except PeerError as exc:
            return error_response(502, str(exc), task_id=body.task_id)
        return JSONResponse(
            {
                "ok": True,
                "task_id": body.task_id,
                "answer": render_answer(body.kind, facts, body.order_id),
                "error": None,
            }
        )

    return Starlette(
        routes=[
            Route("/task", answer, methods=["POST"]),
            Route("/healthz", health_endpoint("baseline-gateway", config)),
        ]
    )


def _lookup(db: Database, query: str) -> Endpoint:
    """GET one record by the path's one parameter: the row of the named query, or 404."""

    async def endpoint(request: Request) -> JSONResponse:
        (key,) = request.path_params.values()
        row = await db.fetch_one(query, key)
        return JSONResponse(row) if row is not None else error_response(404, f"{key} not found")

    return endpoint


def _record_service(service: str, config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    """A service answering its tools' REST endpoints from PostgreSQL, each with the query of the tool's name."""
    assert config.db_dsn is not None
    db = Database(config.db_dsn, telemetry, config.timeouts.db_s)
    routes = [Route(path, _lookup(db, tool), methods=["GET"]) for tool, path in endpoints_of(service).items()]
    return Starlette(routes=[*routes, Route("/healthz", health_endpoint(service, config, db.problem))])


def build_order_service(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    return _record_service("baseline-order", config, telemetry)


def build_shipping_service(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    return _record_service("baseline-shipping", config, telemetry)
