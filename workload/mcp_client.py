"""The agents' MCP client: the tools of one MCP server, and the sessions their calls travel in,
kept as the run's `mcp_session` knob says (workload/knobs.py):

- per_call: a new session for every call (initialize, then tools/call), as langchain-mcp-adapters
  does by default; each call may open a new TCP connection too;
- per_task: one session per task and server, opened at the task's first call, closed at its end
  (`task_sessions`);
- persistent: one session per server for as long as the agent runs.

Every connection goes to the endpoint of the run's `mcp_server` knob (workload.knobs.MCP_PATH_SUFFIX):
each server answers stateless JSON and stateful SSE at once, and a kept session stays with the
endpoint it was opened at.

A kept session lives in a task of its own (the MCP SDK's anyio scopes must close in the task that
opened them), so its requests leave from that task's context: each tools/call names its call in
`params._meta` (telemetry.META_CALL_ID) for LabTransport to tag and measure it all the same.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
from langchain_core.tools import BaseTool
from langchain_mcp_adapters.sessions import create_session
from langchain_mcp_adapters.tools import load_mcp_tools
from mcp import ClientSession
from mcp.types import CallToolResult

from workload.config import bearer
from workload.knobs import MCP_PATH_SUFFIX
from workload.loop import Tool, ToolFailed, Usage
from workload.telemetry import META_CALL_ID, Kind, LabTransport, Telemetry, current_knobs, describe_error, timeout_for

# The libraries' own timeouts are set out of the way (langchain-openai's 120 s between streamed
# chunks, the MCP client's read timeouts): each hop's timeout is the lab's, from the caller's
# H_TIMEOUTS or the service config, applied around the call.
LIBRARY_TIMEOUT_S = 86_400.0
USAGE_META = "lab/usage"
"""Where an agent reached by a hand-off reports its LLM usage: an MCP tool result's `_meta`, an A2A
task's final status event's `metadata` (workload/handoff.py)."""


class HopError(RuntimeError):
    """A failed call to a peer; the message names the peer."""

    def __init__(self, peer: str, exc: BaseException) -> None:
        super().__init__(f"{peer}: {describe_error(exc)}")


@contextmanager
def hop_failures(peer: str, kind: str, seconds: float) -> Iterator[None]:
    """Whatever fails in the block as a HopError naming `peer`; a TimeoutError (the block's own
    `asyncio.timeout(seconds)`) as the hop's `kind` timeout."""
    try:
        yield
    except TimeoutError as exc:
        raise HopError(peer, TimeoutError(f"no answer within {seconds:g} s ({kind} timeout)")) from exc
    except Exception as exc:
        raise HopError(peer, exc) from exc


def _mcp_http_client(
    headers: dict[str, str] | None = None, timeout: httpx.Timeout | None = None, auth: httpx.Auth | None = None
) -> httpx.AsyncClient:
    """httpx client factory for the MCP transport: tags and measures each request."""
    return httpx.AsyncClient(transport=LabTransport(), headers=headers, timeout=timeout, auth=auth)


class KeptSession:
    """One MCP session held open by a task of its own until `close`."""

    def __init__(self, connection: dict[str, Any]) -> None:
        self.connection = connection
        self.session: ClientSession | None = None
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> ClientSession:
        ready: asyncio.Future[ClientSession] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._hold(ready), context=contextvars.copy_context())
        self.session = await ready
        return self.session

    async def _hold(self, ready: asyncio.Future[ClientSession]) -> None:
        try:
            async with create_session(self.connection) as session:  # type: ignore[arg-type]
                await session.initialize()
                ready.set_result(session)
                await self._closing.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
        finally:
            self.session = None

    @property
    def alive(self) -> bool:
        return self.session is not None and self._task is not None and not self._task.done()

    async def close(self) -> None:
        self._closing.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


class TaskSessions:
    """The sessions of one task (mcp_session per_task), by endpoint, closed together at its end."""

    def __init__(self) -> None:
        self.kept: dict[str, KeptSession] = {}
        self.lock = asyncio.Lock()


_task_sessions: contextvars.ContextVar[TaskSessions | None] = contextvars.ContextVar("lab_mcp_sessions", default=None)


@asynccontextmanager
async def task_sessions() -> AsyncIterator[None]:
    """The scope of one task's MCP sessions: what the task opens under per_task closes here."""
    scope = TaskSessions()
    token = _task_sessions.set(scope)
    try:
        yield
    finally:
        _task_sessions.reset(token)
        await asyncio.gather(*(kept.close() for kept in scope.kept.values()))


class ToolBox:
    """The tools of one MCP server, as LangChain tools (their descriptions and argument schemas
    for the model); every call is a logged hop in the session the mcp_session knob asks for."""

    def __init__(
        self, peer: str, url: str, telemetry: Telemetry, timeout_s: float, token: str | None = None, kind: Kind = "tool"
    ) -> None:
        """`token`: the lab's bearer token, sent with every request to the server (MCP authorization)."""
        self.peer, self.url, self.kind, self.telemetry, self.timeout_s = peer, url, kind, telemetry, timeout_s
        self.headers = bearer(token)
        self.tools_by_name: dict[str, BaseTool] = {}
        self._lock = asyncio.Lock()
        self._persistent: dict[str, KeptSession] = {}

    def connection(self) -> dict[str, Any]:
        """The server's endpoint for the run's mcp_server knob, as langchain-mcp-adapters takes it."""
        return {
            "transport": "streamable_http",
            "url": self.url + MCP_PATH_SUFFIX[current_knobs().mcp_server],
            "timeout": LIBRARY_TIMEOUT_S,
            "sse_read_timeout": LIBRARY_TIMEOUT_S,
            "headers": self.headers,
            "httpx_client_factory": _mcp_http_client,
        }

    async def ensure_loaded(self) -> None:
        async with self._lock:
            if self.tools_by_name:
                return
            try:
                async with self.telemetry.call(self.kind, self.peer, "tools/list"), asyncio.timeout(self.timeout_s):
                    tools = await load_mcp_tools(
                        None,
                        connection=self.connection(),  # type: ignore[arg-type]
                        server_name=self.peer,
                        handle_tool_errors=False,
                    )
            except Exception as exc:
                raise HopError(self.peer, exc) from exc
            self.tools_by_name = {t.name: t for t in tools}

    async def load(self) -> list[Tool]:
        """The server's tools as the loop's, listed on first use; each hands work off if the server is an agent."""
        await self.ensure_loaded()
        return self.tools(hand_off=self.kind == "agent")

    def tools(self, hand_off: bool = False) -> list[Tool]:
        """These tools as the agent loop's (loaded first with `ensure_loaded`); `hand_off`: each call
        hands work to another agent."""
        return [
            Tool(name, tool.description, dict(tool.args_schema), functools.partial(self.call, name), hand_off)  # type: ignore[arg-type]
            for name, tool in self.tools_by_name.items()
        ]

    async def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, Usage]:
        """The tool's result text and the usage an agent behind it reports (USAGE_META). A result
        marked as an error raises ToolFailed; a failed hop raises HopError."""
        await self.ensure_loaded()
        if name not in self.tools_by_name:
            raise ToolFailed(f"{self.peer} has no tool {name!r}")
        seconds = timeout_for(self.kind, self.timeout_s)
        with hop_failures(self.peer, self.kind, seconds):
            async with asyncio.timeout(seconds):
                result = await self._call(name, arguments)
        if result.isError:
            raise ToolFailed(_result_text(result) or "the tool failed without saying why")
        return _result_text(result), Usage.of((result.meta or {}).get(USAGE_META))

    async def _call(self, name: str, arguments: dict[str, Any]) -> CallToolResult:
        policy = current_knobs().mcp_session
        if policy == "per_call":
            async with self.telemetry.call(self.kind, self.peer, name) as event:
                async with create_session(self.connection()) as session:  # type: ignore[arg-type]
                    await session.initialize()
                    return await session.call_tool(name, arguments, meta={META_CALL_ID: event.call_id})
        kept = await self._kept(policy)
        try:
            async with self.telemetry.call(self.kind, self.peer, name) as event:
                return await kept.session.call_tool(name, arguments, meta={META_CALL_ID: event.call_id})  # type: ignore[union-attr]
        except Exception:
            await kept.close()  # a session that failed a call is not reused: the next call opens a new one
            raise

    async def _kept(self, policy: str) -> KeptSession:
        """The task's session (per_task) or the agent's (persistent) to this server's endpoint for the
        run's knobs, opened on first use as a logged call of its own (`initialize`)."""
        scope = _task_sessions.get() if policy == "per_task" else None
        if policy == "per_task" and scope is None:
            raise RuntimeError("mcp_session per_task outside a task's task_sessions() scope")
        sessions, lock = (scope.kept, scope.lock) if scope is not None else (self._persistent, self._lock)
        connection = self.connection()
        async with lock:
            kept = sessions.get(connection["url"])
            if kept is not None and kept.alive:
                return kept
            kept = KeptSession(connection)
            async with self.telemetry.call(self.kind, self.peer, "initialize"):
                await kept.open()
            sessions[connection["url"]] = kept
            return kept


def _result_text(result: CallToolResult) -> str:
    """The text of a tool result (its text content blocks)."""
    return "\n".join(block.text for block in result.content if getattr(block, "type", None) == "text")
