"""The two MCP tool servers (streamable HTTP, official `mcp` SDK), both on `agent-b`.

tool-db: query tools over the PostgreSQL database. tool-synth: a synthetic microservice
whose response size, latency and downstream fan-out come from the config (`synth`); it answers
its tools over plain REST too, for the baseline chain (config.TOOL_ENDPOINTS), with the same work.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import Field, TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from workload.config import ServiceConfig, bearer, endpoints_of
from workload.db import Database
from workload.knobs import MCP_PATH_SUFFIX
from workload.tasks import CUSTOMER_ID_PATTERN, ORDER_ID_PATTERN, hub_of
from workload.telemetry import Telemetry, adopt_caller, lab_http_client
from workload.web import error_response, health_endpoint

OrderId = Annotated[str, Field(pattern=ORDER_ID_PATTERN, description="order id such as ORD-00042")]
CustomerId = Annotated[str, Field(pattern=CUSTOMER_ID_PATTERN, description="customer id such as C-0007")]
SynthArgument = Annotated[str, Field(min_length=1, max_length=64)]


class _EndedSessionNoise(logging.Filter):
    """mcp 1.30.0 logs a traceback ("Error in standalone SSE writer": ClosedResourceError) for every
    stateful session a client ends with DELETE, which is how its own client ends every session."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.getMessage() == "Error in standalone SSE writer"
            and record.exc_info is not None
            and isinstance(record.exc_info[1], anyio.ClosedResourceError)
        )


logging.getLogger("mcp.server.streamable_http").addFilter(_EndedSessionNoise())
MCP_PATH = "/mcp"
"""Where every MCP server answers stateless JSON; stateful SSE is beside it (workload.knobs.MCP_PATH_SUFFIX)."""
F = TypeVar("F", bound=Callable[..., Any])


class McpServer:
    """One MCP server answering in every mode of the `mcp_server` knob at once, each at its own path:
    a FastMCP per mode with the same tool functions, in one app that runs every mode's session manager.

    Hosts are not restricted: nodes are reached by lab addresses, not localhost."""

    def __init__(self, name: str, instructions: str) -> None:
        security = TransportSecuritySettings(enable_dns_rebinding_protection=False)
        self.modes = {
            mode: FastMCP(
                name,
                instructions=instructions,
                stateless_http=mode == "stateless_json",
                json_response=mode == "stateless_json",
                streamable_http_path=MCP_PATH + suffix,
                log_level="WARNING",
                transport_security=security,
            )
            for mode, suffix in MCP_PATH_SUFFIX.items()
        }

    def tool(self, **options: Any) -> Callable[[F], F]:
        """Register a tool function in every mode (as `FastMCP.tool(**options)` does in one)."""

        def register(fn: F) -> F:
            for server in self.modes.values():
                server.tool(**options)(fn)
            return fn

        return register

    def app(self, *routes: Route) -> Starlette:
        """The ASGI app: every mode's endpoint, then `routes`."""
        endpoints = [route for server in self.modes.values() for route in server.streamable_http_app().routes]

        @asynccontextmanager
        async def lifespan(_: Starlette) -> AsyncIterator[None]:
            async with AsyncExitStack() as stack:
                for server in self.modes.values():
                    await stack.enter_async_context(server.session_manager.run())
                yield

        return Starlette(routes=[*endpoints, *routes], lifespan=lifespan)


def adopt_caller_context(ctx: Context) -> None:
    """Make the ids and run settings of the HTTP request that carried this MCP call the current context
    (the MCP server runs tools in its session's task, not the request's)."""
    request = ctx.request_context.request
    if request is not None:
        adopt_caller(request.headers)


def build_tool_db(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    assert config.db_dsn is not None
    db = Database(config.db_dsn, telemetry, config.timeouts.db_s)
    mcp = McpServer("tool-db", "Order, shipment and customer records from the shop database.")

    async def lookup(ctx: Context, query: str, key: str) -> dict[str, Any]:
        adopt_caller_context(ctx)
        row = await db.fetch_one(query, key)
        if row is None:
            raise ToolError(f"{key} not found")
        return row

    @mcp.tool()
    async def get_order(order_id: OrderId, ctx: Context) -> dict[str, Any]:
        """Look up an order: its status (pending, paid, shipped, delivered, cancelled), customer, item, quantity and total amount."""  # noqa: E501 - the tool's description, sent to the LLM as it is
        return await lookup(ctx, "get_order", order_id)

    @mcp.tool()
    async def get_shipment(order_id: OrderId, ctx: Context) -> dict[str, Any]:
        """Look up the shipment of an order: carrier, tracking number, delivery status and estimated delivery date (eta)."""  # noqa: E501 - as above
        return await lookup(ctx, "get_shipment", order_id)

    @mcp.tool()
    async def get_customer(customer_id: CustomerId, ctx: Context) -> dict[str, Any]:
        """Look up a customer by customer id: name, email and city."""
        return await lookup(ctx, "get_customer", customer_id)

    return mcp.app(Route("/healthz", health_endpoint("tool-db", config, db.problem), methods=["GET"]))


def _synthetic(seed: str, size: int, **extra: Any) -> dict[str, Any]:
    """Deterministic filler data for `seed` (plus `extra`), padded to about `size` bytes of JSON."""
    digest = hashlib.sha256(seed.encode()).hexdigest()
    body: dict[str, Any] = {
        "ref": seed,
        "hub": hub_of(seed),
        "delay_risk": round(int(digest[4:8], 16) / 0xFFFF, 3),
        **extra,
    }
    padding = max(0, size - len(json.dumps(body)) - 16)
    words = [_FILLER[int(digest[i % 64], 16)] for i in range(padding // 4 + 1)]
    body["padding"] = " ".join(words)[:padding]
    return body


# Words, not hex: an agent resends tool results to its LLM, and hex costs a tokenizer about three
# times the tokens of text of the same bytes, which a CPU LLM pays for at every step.
_FILLER = (
    "route segment checked sorted loaded scanned depot window lane cleared manifest queued transfer pallet dock gate"
).split()


def build_tool_synth(config: ServiceConfig, telemetry: Telemetry) -> Starlette:
    synth = config.synth
    # by default the fan-out goes to this server's own /backend, at the address it listens on
    downstream = synth.downstream_url or f"{config.own_url('tool-synth')}/backend"
    client = lab_http_client(config.timeouts.service_s, headers=bearer(config.api_token))
    mcp = McpServer("tool-synth", "A synthetic carrier microservice with configurable size, latency and fan-out.")

    async def fan_out(ref: str) -> list[dict[str, Any]]:
        async def one(i: int) -> dict[str, Any]:
            async with telemetry.call("service", "synth-backend", "GET /backend"):
                response = await client.get(downstream, params={"ref": f"{ref}/{i}"})
                response.raise_for_status()
                return response.json()

        return list(await asyncio.gather(*(one(i) for i in range(synth.fanout))))

    async def work(ref: str) -> dict[str, Any]:
        await asyncio.sleep(synth.latency_ms / 1000)
        parts = await fan_out(ref)
        return _synthetic(ref, synth.response_bytes, backends=[p["hub"] for p in parts])

    async def parcel_report(tracking_no: str) -> dict[str, Any]:
        return await work(f"parcel:{tracking_no}")

    async def carrier_report(name: str) -> dict[str, Any]:
        return await work(f"carrier:{name}")

    @mcp.tool()
    async def track_parcel(tracking_no: SynthArgument, ctx: Context) -> dict[str, Any]:
        """Track a parcel by its tracking number: the hub it was last scanned at and its delay risk."""
        adopt_caller_context(ctx)
        return await parcel_report(tracking_no)

    @mcp.tool()
    async def carrier_status(carrier: SynthArgument, ctx: Context) -> dict[str, Any]:
        """Current service status of a carrier (DHL, UPS, FedEx, PostNL, GLS): busiest hub and delay risk."""
        adopt_caller_context(ctx)
        return await carrier_report(carrier)

    async def backend(request: Request) -> JSONResponse:
        return JSONResponse(_synthetic(request.query_params.get("ref", ""), 256))

    rest = {"track_parcel": parcel_report, "carrier_status": carrier_report}
    return mcp.app(
        *(
            Route(path, _rest_endpoint(rest[tool]), methods=["GET"])
            for tool, path in endpoints_of("tool-synth").items()
        ),
        Route("/backend", backend, methods=["GET"]),
        Route("/healthz", health_endpoint("tool-synth", config), methods=["GET"]),
    )


def _rest_endpoint(work: Callable[[str], Awaitable[dict[str, Any]]]) -> Callable[[Request], Awaitable[JSONResponse]]:
    """The REST form of a tool-synth tool, for the baseline: its one argument from the path, the tool's
    very work as the body (the MCP tools add only the protocol around it)."""
    checked = TypeAdapter(SynthArgument)

    async def endpoint(request: Request) -> JSONResponse:
        (argument,) = request.path_params.values()
        try:
            checked.validate_python(argument)
        except ValidationError as exc:
            return error_response(400, f"bad argument: {exc.errors()[0]['msg']}")
        return JSONResponse(await work(argument))

    return endpoint
