"""The hand-off from Agent A to Agent B over the A2A protocol (the official `a2a-sdk`), both sides.

Agent B (server): beside its MCP endpoints, its app serves its Agent Card at
`/.well-known/agent-card.json` and A2A's JSON-RPC endpoint at `/`. Each message is one task: the
executor emits the task (submitted), `working`, the answer as an artifact, then `completed` with
what the work cost in the status event's metadata (USAGE_META, as the MCP tool's result `_meta`
does); a failed loop ends the task `failed` with the reason, a bad request `rejected`. The endpoint
speaks A2A 1.0 (`SendMessage`, `SendStreamingMessage`) and, for 0.3 clients, `message/send` and
`message/stream`: the card lists both interfaces.

Agent A (client): `A2AHandOff` reads the card once (a logged `agent` call, op `agent-card`), then
each hand-off is one logged `agent` call whose op is the JSON-RPC method the SDK's client sends
(`SendStreamingMessage`, as the card advertises streaming, else `SendMessage`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
from a2a.client import A2ACardResolver, Client, ClientConfig, ClientFactory
from a2a.helpers import get_artifact_text, get_message_text, new_task, new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    HTTPAuthSecurityScheme,
    Role,
    SecurityRequirement,
    SecurityScheme,
    SendMessageRequest,
    StreamResponse,
    StringList,
    TaskState,
    TaskStatus,
)
from a2a.utils.constants import (
    AGENT_CARD_WELL_KNOWN_PATH,
    DEFAULT_RPC_URL,
    PROTOCOL_VERSION_0_3,
    PROTOCOL_VERSION_1_0,
    TransportProtocol,
)
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.routing import Route

from workload.config import ServiceConfig, bearer
from workload.loop import MalformedDecision, Outcome, Tool, ToolFailed, Usage
from workload.mcp_client import LIBRARY_TIMEOUT_S, USAGE_META, HopError, hop_failures
from workload.telemetry import LabTransport, Telemetry, adopt_caller, describe_error, timeout_for

HAND_OFF_TOOL = "ask_logistics_agent"
HAND_OFF_DESCRIPTION = (
    "Hand a logistics question to Agent B, which tracks parcels by tracking number and checks carriers' "
    "service status; give it the tracking number or carrier it needs. Returns its answer."
)
"""The hand-off as Agent A's model sees it, whichever protocol carries it (the knob `hand_off`)."""
HandOffRequest = Annotated[str, Field(min_length=1, max_length=2000)]


class HandOffArguments(BaseModel):
    # no docstring: its JSON schema is the very one FastMCP builds for the MCP tool's arguments
    model_config = ConfigDict(title=f"{HAND_OFF_TOOL}Arguments")
    request: HandOffRequest


FAN_OUT_TOOL = "ask_logistics_agents"
FAN_OUT_DESCRIPTION = (
    "Hand logistics questions to a team of logistics agents, which track parcels by tracking number and check "
    "carriers' service status: one question per parcel or carrier, each with the tracking number or carrier it "
    "needs. The agents work on the questions at once, one question each. Returns every answer."
)
"""A planner's hand-off to several agents at once (the fanout workload), as its model sees it."""
MAX_FAN_OUT = 8


class FanOutArguments(BaseModel):
    """The subtasks of one fan-out, one per agent."""

    model_config = ConfigDict(title=f"{FAN_OUT_TOOL}Arguments")
    requests: list[HandOffRequest] = Field(min_length=1, max_length=MAX_FAN_OUT)


A2A_PATH = DEFAULT_RPC_URL
"""Where Agent B answers A2A JSON-RPC: the SDK's default, its app's root."""
STREAM_OP, SEND_OP = "SendStreamingMessage", "SendMessage"
"""A2A 1.0's JSON-RPC methods for a message (0.3's `message/stream` and `message/send`): the op of a
hand-off, as the server side logs it too."""
CARD_OP = "agent-card"
ANSWER_ARTIFACT = "answer"
Subtask = Callable[[str], Awaitable[Outcome]]
"""Agent B's loop on one handed-off request."""
SUBTASK_FAILURES: tuple[type[Exception], ...] = (HopError, TimeoutError, MalformedDecision)
"""How a subtask fails: a hop of Agent B's failed, its time ran out, or its model's decisions were malformed."""
_ENDED_UNSUCCESSFULLY = (TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_REJECTED, TaskState.TASK_STATE_CANCELED)


def usage_report(outcome: Outcome) -> dict[str, int]:
    """What a handed-off loop reports of its work (under USAGE_META): its LLM usage, steps and tool calls."""
    return {**vars(outcome.usage), "steps": outcome.steps, "tool_calls": outcome.tool_calls}


# --- Agent B: the server ---


def agent_card(config: ServiceConfig, service: str = "agent-b", name: str = "Agent B") -> AgentCard:
    """The card of a logistics agent (Agent B, or a fanout worker: `service`, `name`): its JSON-RPC endpoint
    at the node's own address (A2A 1.0 and 0.3), its skills (tool-synth's tools), streaming, and the bearer
    token it wants when the lab has one."""
    url = config.own_url(service) + A2A_PATH
    return AgentCard(
        name=name,
        description="A logistics agent that checks parcels and carriers for Agent A.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding=TransportProtocol.JSONRPC.value, protocol_version=version)
            for version in (PROTOCOL_VERSION_1_0, PROTOCOL_VERSION_0_3)
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(
                id="parcel_tracking",
                name="Parcel tracking",
                description="Where a parcel is, by tracking number: the hub it was last scanned at and its delay risk.",
                tags=["logistics", "parcel"],
                examples=["Track parcel TRK12345: where is it and is it at risk of delay?"],
            ),
            AgentSkill(
                id="carrier_status",
                name="Carrier status",
                description="A carrier's current service status (DHL, UPS, FedEx, PostNL, GLS): busiest hub and delay risk.",  # noqa: E501 - one sentence for the card
                tags=["logistics", "carrier"],
                examples=["Is DHL running late today?"],
            ),
        ],
        **(_bearer_security() if config.api_token else {}),
    )


def _bearer_security() -> dict[str, Any]:
    """The card's security fields for an HTTP bearer token (A2A: securitySchemes, securityRequirements)."""
    scheme = SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="Bearer"))
    return {
        "security_schemes": {"bearer": scheme},
        "security_requirements": [SecurityRequirement(schemes={"bearer": StringList()})],
    }


class SubtaskExecutor(AgentExecutor):
    """Agent B's A2A side: each message is a task that `run` (Agent B's loop) works on, in the ids
    and run settings of the request that carried it, so its LLM and tool calls are children of the
    caller's hand-off call and get the caller's timeouts and knobs."""

    def __init__(self, run: Subtask, service: str = "agent-b") -> None:
        self.run, self.service = run, service

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        adopt_caller(context.call_context.state.get("headers", {}))
        updater = await _open_task(context, event_queue)
        try:
            request = HandOffArguments(request=context.get_user_input()).request
        except ValidationError as exc:
            reason = f"{self.service}: bad request: {exc.errors()[0]['msg']}"
            await updater.reject(updater.new_agent_message([new_text_part(reason)]))
            return
        await updater.start_work()
        try:
            outcome = await self.run(request)
        except SUBTASK_FAILURES as exc:
            await updater.failed(updater.new_agent_message([new_text_part(f"{self.service}: {describe_error(exc)}")]))
            return
        await updater.add_artifact([new_text_part(outcome.answer)], name=ANSWER_ARTIFACT, last_chunk=True)
        await updater.update_status(TaskState.TASK_STATE_COMPLETED, metadata={USAGE_META: usage_report(outcome)})

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        """The SDK has cancelled `execute` already: say so."""
        await TaskUpdater(event_queue, str(context.task_id), str(context.context_id)).cancel()


async def _open_task(context: RequestContext, event_queue: EventQueue) -> TaskUpdater:
    """The request's task, emitted as submitted unless it exists already, and its updater."""
    task = context.current_task
    if task is None:
        assert context.message is not None and context.task_id and context.context_id  # set by the SDK
        task = new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED, history=[context.message])
        await event_queue.enqueue_event(task)
    return TaskUpdater(event_queue, task.id, task.context_id)


def a2a_routes(config: ServiceConfig, run: Subtask, service: str = "agent-b", name: str = "Agent B") -> list[Route]:
    """A logistics agent's A2A endpoints: its card and JSON-RPC (message send and stream, tasks), tasks
    kept in memory."""
    card = agent_card(config, service, name)
    handler = DefaultRequestHandler(
        agent_executor=SubtaskExecutor(run, service), task_store=InMemoryTaskStore(), agent_card=card
    )
    return [
        *create_agent_card_routes(card, card_url=AGENT_CARD_WELL_KNOWN_PATH),
        *create_jsonrpc_routes(handler, A2A_PATH, enable_v0_3_compat=True),
    ]


# --- Agent A: the client ---


class A2AHandOff:
    """Agent A's hand-off to an agent over A2A, as a loop tool, through the official a2a-sdk client on
    an httpx client whose requests LabTransport tags and measures. The card is read once."""

    def __init__(
        self,
        peer: str,
        base_url: str,
        telemetry: Telemetry,
        timeout_s: float,
        token: str | None = None,
        streaming: bool = True,
    ):
        """`streaming`: stream the answer (SendStreamingMessage) when the card advertises streaming, else
        SendMessage. Streaming is what the SDK's client does as it comes, so every client built on its
        ClientFactory without opting out: a2a-sdk 1.3.0's ClientConfig.streaming defaults to true, and
        BaseClient.send_message streams whenever the card says capabilities.streaming. `token`: the
        lab's bearer token, which the card asks for, sent with every request."""
        self.peer, self.base_url, self.telemetry, self.timeout_s = peer, base_url, telemetry, timeout_s
        self.http = httpx.AsyncClient(transport=LabTransport(), timeout=LIBRARY_TIMEOUT_S, headers=bearer(token))
        self.streaming = streaming
        self.factory = ClientFactory(ClientConfig(httpx_client=self.http, streaming=streaming))
        self._client: tuple[Client, str] | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> tuple[Client, str]:
        """The SDK client for the peer's card (fetched on first use) and the op its messages go as."""
        async with self._lock:
            if self._client is None:
                seconds = timeout_for("agent", self.timeout_s)
                with hop_failures(self.peer, "agent", seconds):
                    async with self.telemetry.call("agent", self.peer, CARD_OP), asyncio.timeout(seconds):
                        card = await A2ACardResolver(self.http, self.base_url).get_agent_card()
                    client = self.factory.create(card)
                self._client = client, STREAM_OP if self.streaming and card.capabilities.streaming else SEND_OP
            return self._client

    async def load(self) -> list[Tool]:
        """The hand-off as the loop's one tool, once the card is read."""
        await self.client()
        return [self.tool()]

    def tool(self) -> Tool:
        return Tool(HAND_OFF_TOOL, HAND_OFF_DESCRIPTION, HandOffArguments.model_json_schema(), self.ask, hand_off=True)

    async def ask(self, arguments: dict[str, Any]) -> tuple[str, Usage]:
        """The peer's answer and the usage it reports. A failed or rejected task raises ToolFailed with
        its reason (the model sees it); a failed hop, or a stream that ends before the task does, HopError."""
        try:
            request = HandOffArguments.model_validate(arguments).request
        except ValidationError as exc:
            raise ToolFailed(f"bad arguments: {exc.errors()[0]['msg']}") from exc
        client, op = await self.client()
        message = SendMessageRequest(message=new_text_message(request, role=Role.ROLE_USER))
        seconds = timeout_for("agent", self.timeout_s)
        with hop_failures(self.peer, "agent", seconds):
            async with self.telemetry.call("agent", self.peer, op), asyncio.timeout(seconds):
                reply = await _collect(client.send_message(message))
                reply.check_ended()
        return reply.result()


@dataclass
class _Reply:
    """What the events of one message said: the task's state, its answer, why it failed, the usage."""

    state: int = TaskState.TASK_STATE_UNSPECIFIED
    answer: list[str] = field(default_factory=list)
    reason: str = ""
    usage: Any = None

    def add(self, event: StreamResponse) -> None:
        if event.HasField("message"):  # a reply without a task: the whole answer
            self.state, self.answer = TaskState.TASK_STATE_COMPLETED, [get_message_text(event.message)]
            self._metadata(event.message.metadata)
        elif event.HasField("task"):
            self._status(event.task.status, event.task.metadata)
            self.answer = [get_artifact_text(a) for a in event.task.artifacts]
        elif event.HasField("status_update"):
            self._status(event.status_update.status, event.status_update.metadata)
        elif event.HasField("artifact_update"):
            self.answer.append(get_artifact_text(event.artifact_update.artifact))

    def _status(self, status: TaskStatus, metadata: Struct) -> None:
        self.state = status.state
        self.reason = get_message_text(status.message) if status.HasField("message") else self.reason
        self._metadata(metadata)

    def _metadata(self, metadata: Struct) -> None:
        self.usage = MessageToDict(metadata).get(USAGE_META, self.usage)

    def check_ended(self) -> None:
        if self.state != TaskState.TASK_STATE_COMPLETED and self.state not in _ENDED_UNSUCCESSFULLY:
            raise RuntimeError(f"the answer ended with the task {TaskState.Name(self.state)}, not finished")

    def result(self) -> tuple[str, Usage]:
        if self.state in _ENDED_UNSUCCESSFULLY:
            raise ToolFailed(self.reason or f"the task ended {TaskState.Name(self.state)}")
        return "\n".join(text for text in self.answer if text).strip(), Usage.of(self.usage)


async def _collect(events: AsyncIterator[StreamResponse]) -> _Reply:
    reply = _Reply()
    async for event in events:
        reply.add(event)
    return reply
