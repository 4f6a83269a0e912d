"""Semantic telemetry: ids, header propagation and one JSONL event per call.

Every hop writes `CallEvent`s. A client opens a call with `Telemetry.call(...)`; the
ids of the active call travel in HTTP headers (W3C `traceparent` plus `x-lab-*`), which
`LabTransport` adds to every httpx request it sends and from which it records the bytes
and the TCP socket the request used. The server side of an HTTP hop is logged by
`TelemetryMiddleware` (ASGI), which takes the call id from the headers.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import json
import os
import re
import secrets
import socket
import ssl
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from workload.knobs import Knobs
from workload.knobs import from_header as knobs_from_header

Kind = Literal["task", "agent", "llm", "tool", "service", "db"]
KINDS: tuple[str, ...] = ("task", "agent", "llm", "tool", "service", "db")

H_TASK = "x-lab-task-id"
H_CALL = "x-lab-call-id"
H_PARENT = "x-lab-parent-id"
H_AGENT = "x-lab-agent-id"
H_KIND = "x-lab-kind"
H_FROM = "x-lab-from"
H_TIMEOUTS = "x-lab-timeouts"
"""The run's timeouts, e.g. `llm=60,tool=20,agent=120,task=300` (seconds): set by the driver from the
scenario and passed on by every hop, like a gRPC deadline, so a scenario sets them without a redeploy."""
H_KNOBS = "x-lab-knobs"
"""The run's protocol knobs (workload.knobs.Knobs as JSON), passed on the same way."""
PROPAGATED = (H_TIMEOUTS, H_KNOBS)
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


@dataclass
class CallEvent:
    """One line of a service's JSONL file: one call, seen from one side."""

    node: str
    service: str
    agent_id: str | None
    task_id: str | None
    call_id: str
    parent_id: str | None
    trace_id: str
    kind: str
    side: Literal["client", "server"]
    peer: str
    op: str
    start_ns: int
    end_ns: int = 0
    req_bytes: int = 0
    resp_bytes: int = 0
    status: Literal["ok", "error"] = "ok"
    error: str | None = None
    local: str | None = None
    remote: str | None = None
    # every (local, remote) TCP connection the call used, in order; normally one
    conns: list[list[str]] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    """For an `llm` client call: the tokens of its prompt and of its answer, as the server counted them."""
    event: Literal["call", "stream"] = "call"
    """`stream`: the server side of a GET answered with an event stream that the client holds open
    for whatever the server may send (a stateful MCP session's): the server waits on it, it does no work."""

    def use_socket(self, local: str, remote: str) -> None:
        if [local, remote] not in self.conns:
            self.conns.append([local, remote])
        if self.local is None:
            self.local, self.remote = local, remote

    def fail(self, error: BaseException | str) -> None:
        self.status = "error"
        self.error = error if isinstance(error, str) else describe_error(error)


def describe_error(exc: BaseException) -> str:
    """A one-line description that names the exception type (and unwraps groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class TraceContext:
    """The ids in force while handling one request: new calls become its children."""

    task_id: str | None
    trace_id: str
    call_id: str | None


_context: contextvars.ContextVar[TraceContext | None] = contextvars.ContextVar("lab_trace", default=None)
_active: contextvars.ContextVar[CallEvent | None] = contextvars.ContextVar("lab_call", default=None)
_run: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("lab_run")
"""The run's settings in force (PROPAGATED headers): what this context calls next carries them on
(read with _run.get({}): none set, none carried)."""


def set_run(timeouts: dict[str, float] | None = None, knobs: Knobs | None = None) -> contextvars.Token:
    """The run's timeouts and knobs for what this context calls next (the driver sets them)."""
    settings = {H_TIMEOUTS: format_timeouts(timeouts) if timeouts else None, H_KNOBS: knobs.header() if knobs else None}
    return _run.set({k: v for k, v in settings.items() if v})


def adopt_run(headers: Any) -> contextvars.Token:
    """The caller's run settings (request headers with lower-case keys) for this context."""
    return _run.set({h: headers[h] for h in PROPAGATED if headers.get(h)})


def adopt_caller(headers: Any) -> None:
    """Make the caller's ids and run settings (request headers with lower-case keys) this context's,
    for a handler that runs outside the request's own context (an MCP tool, an A2A executor)."""
    set_context(context_from_headers(headers))
    adopt_run(headers)


def format_timeouts(timeouts: dict[str, float]) -> str:
    return ",".join(f"{name}={seconds:g}" for name, seconds in timeouts.items())


def current_knobs() -> Knobs:
    return knobs_from_header(_run.get({}).get(H_KNOBS))


def timeout_for(name: str, default: float) -> float:
    """The caller's timeout `name` (llm, tool, agent, task) for this request, else `default`."""
    for item in _run.get({}).get(H_TIMEOUTS, "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == name:
            try:
                seconds = float(value)
            except ValueError:
                break
            return seconds if 0 < seconds < float("inf") else default
    return default


def new_call_id() -> str:
    return secrets.token_hex(8)


def new_trace_id() -> str:
    return secrets.token_hex(16)


def current_context() -> TraceContext | None:
    return _context.get()


def set_context(ctx: TraceContext | None) -> contextvars.Token:
    return _context.set(ctx)


def context_from_headers(headers: Any) -> TraceContext:
    """Parse the lab headers (a Starlette/httpx headers object or a dict with lower-case keys)."""
    match = _TRACEPARENT.match(headers.get("traceparent", "") or "")
    trace_id = match.group(1) if match else new_trace_id()
    call_id = headers.get(H_CALL) or (match.group(2) if match else None)
    return TraceContext(task_id=headers.get(H_TASK) or None, trace_id=trace_id, call_id=call_id)


def outgoing_headers(call: CallEvent) -> dict[str, str]:
    headers = {
        "traceparent": f"00-{call.trace_id}-{call.call_id}-01",
        H_CALL: call.call_id,
        H_KIND: call.kind,
        H_FROM: call.service,
    }
    optional = {H_TASK: call.task_id, H_PARENT: call.parent_id, H_AGENT: call.agent_id}
    headers.update({k: v for k, v in optional.items() if v})
    return headers


def sockname(sock: socket.socket) -> tuple[str, str]:
    """(local, remote) of a connected socket as 'ip:port' strings."""
    return _addr(sock.getsockname()), _addr(sock.getpeername())


def _addr(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = f"[{addr[0]}]" if ":" in str(addr[0]) else str(addr[0])
        return f"{host}:{addr[1]}"
    return str(addr)


class EventWriter:
    """Appends events as JSON lines to one file, one write() per event. A line the disk refuses
    (full) is dropped whole, never left cut, and never fails the call it describes: the service
    goes on as it would without the lab's telemetry, and says on stderr (its journal) how many
    events it dropped."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        self._size = os.fstat(self._fd).st_size
        self.dropped = 0  # events not written since the last one that was

    def write(self, event: CallEvent) -> None:
        line = (json.dumps(asdict(event), separators=(",", ":")) + "\n").encode()
        with self._lock:
            try:
                written = os.write(self._fd, line)
                if written < len(line):  # the disk filled during this line
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError as exc:
                with contextlib.suppress(OSError):  # shrinking a file needs no room
                    os.ftruncate(self._fd, self._size)
                if not self.dropped:
                    print(f"telemetry: {self.path.name}: {exc.strerror}; dropping events", file=sys.stderr)
                self.dropped += 1
                return
            self._size += written
            if self.dropped:
                print(f"telemetry: {self.path.name}: writing again, {self.dropped} event(s) dropped", file=sys.stderr)
                self.dropped = 0

    def close(self) -> None:
        with self._lock:
            os.close(self._fd)


class Telemetry:
    """The telemetry of one service process."""

    def __init__(self, node: str, service: str, agent_id: str | None, directory: Path) -> None:
        self.node = node
        self.service = service
        self.agent_id = agent_id
        self.writer = EventWriter(directory / f"{service}.jsonl")

    def _event(self, ctx: TraceContext | None, **fields: Any) -> CallEvent:
        return CallEvent(
            node=self.node,
            service=self.service,
            agent_id=self.agent_id,
            task_id=ctx.task_id if ctx else None,
            trace_id=ctx.trace_id if ctx else new_trace_id(),
            start_ns=time.time_ns(),
            **fields,
        )

    @asynccontextmanager
    async def call(self, kind: Kind, peer: str, op: str, *, task_id: str | None = None) -> AsyncIterator[CallEvent]:
        """A client-side call: child of the current context, logged when the block ends.

        HTTP requests sent through `LabTransport` inside the block carry its ids and add
        their bytes and sockets to it. An exception marks it failed and propagates.
        """
        ctx = current_context()
        if task_id is not None:
            ctx = TraceContext(task_id=task_id, trace_id=ctx.trace_id if ctx else new_trace_id(), call_id=None)
        event = self._event(
            ctx,
            call_id=new_call_id(),
            parent_id=ctx.call_id if ctx else None,
            kind=kind,
            side="client",
            peer=peer,
            op=op,
        )
        call_token = _active.set(event)
        ctx_token = set_context(TraceContext(event.task_id, event.trace_id, event.call_id))
        _open_calls[event.call_id] = (event, _run.get({}))
        try:
            yield event
        except BaseException as exc:
            if event.status == "ok":
                event.fail(exc)
            raise
        finally:
            del _open_calls[event.call_id]
            _context.reset(ctx_token)
            _active.reset(call_token)
            event.end_ns = time.time_ns()
            self.writer.write(event)

    def server_event(self, headers: Any, peer: str, op: str) -> CallEvent:
        """The server side of an incoming call; the caller logs when it finishes."""
        ctx = context_from_headers(headers)
        return self._event(
            ctx,
            call_id=ctx.call_id or new_call_id(),
            parent_id=headers.get(H_PARENT) or None,
            kind=headers.get(H_KIND) if headers.get(H_KIND) in KINDS else "service",
            side="server",
            peer=headers.get(H_FROM) or peer,
            op=op,
        )


def active_call() -> CallEvent | None:
    return _active.get()


META_CALL_ID = "lab/call_id"
"""Where a JSON-RPC request made outside its call's context (an MCP session kept open by a task of
its own) names the call in its `params._meta`, so LabTransport still tags and measures it."""
_open_calls: dict[str, tuple[CallEvent, dict[str, str]]] = {}
"""Every client call in progress in this process, by call id, with the run settings it started under."""


def _request_call(request: httpx.Request) -> tuple[CallEvent | None, dict[str, str]]:
    """The call a request belongs to: the one its JSON-RPC `_meta` names, else the active call of
    this context. A kept MCP session's task keeps the context of the call that opened it, so what the
    session sends on its own (its GET stream, the tools/list the SDK sends to check a tool's result,
    its DELETE) goes out as part of that call even after it has ended: the server's side records it
    then, though the client's record is already written."""
    if _has_content(request) and b'"_meta"' in request.content and isinstance(message := _json(request.content), dict):
        meta = (message.get("params") or {}).get("_meta") if isinstance(message.get("params"), dict) else None
        if isinstance(meta, dict) and (found := _open_calls.get(str(meta.get(META_CALL_ID)))):
            return found
    return active_call(), _run.get({})


class _CountingStream(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, event: CallEvent) -> None:
        self._inner = inner
        self._event = event

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._event.resp_bytes += len(chunk)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class LabTransport(httpx.AsyncBaseTransport):
    """httpx transport that tags requests with the active call's ids and the run's settings,
    records request/response body bytes and the TCP socket of each request into that call, and
    reuses connections as the run's knobs say (http_reuse, http_keepalive_s)."""

    def __init__(self, **transport_kwargs: Any) -> None:
        self._kwargs = transport_kwargs
        self._pools: dict[float, httpx.AsyncHTTPTransport] = {}

    def _pool(self, knobs: Knobs) -> httpx.AsyncHTTPTransport:
        """The connection pool whose idle connections expire after the run's keep-alive knob."""
        if knobs.http_keepalive_s not in self._pools:
            limits = httpx.Limits(
                max_connections=100, max_keepalive_connections=20, keepalive_expiry=knobs.http_keepalive_s
            )
            self._pools[knobs.http_keepalive_s] = httpx.AsyncHTTPTransport(limits=limits, **self._kwargs)
        return self._pools[knobs.http_keepalive_s]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        event, run = _request_call(request)
        knobs = knobs_from_header(run.get(H_KNOBS))
        if knobs.http_reuse == "per_call":
            request.headers["connection"] = "close"
        if event is None:
            return await self._pool(knobs).handle_async_request(request)
        request.headers.update(outgoing_headers(event))
        request.headers.update(run)
        event.req_bytes += len(request.content) if _has_content(request) else 0
        response = await self._pool(knobs).handle_async_request(request)
        stream = response.extensions.get("network_stream")
        if stream is not None:
            local, remote = stream.get_extra_info("client_addr"), stream.get_extra_info("server_addr")
            event.use_socket(_addr(local), _addr(remote))
        response.stream = _CountingStream(response.stream, event)  # type: ignore[arg-type]
        return response

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()


def _has_content(request: httpx.Request) -> bool:
    try:
        request.content  # noqa: B018 - the property raises for a streamed body not read yet
    except httpx.RequestNotRead:
        return False
    return True


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx builds a TLS context (the whole CA bundle) for every transport: ~16 ms of CPU,
    which the driver's client per task would spend on a host it shares with the nodes."""
    return httpx.create_ssl_context()


def lab_http_client(timeout: float, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client whose requests are tagged and measured (see `LabTransport`)."""
    return httpx.AsyncClient(transport=LabTransport(verify=_ssl_context()), timeout=httpx.Timeout(timeout), **kwargs)


class TelemetryMiddleware:
    """ASGI middleware: logs the server side of every HTTP request (but /healthz) and
    makes the caller's ids the context of the handler."""

    def __init__(self, app: Any, telemetry: Telemetry) -> None:
        self.app = app
        self.telemetry = telemetry

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        event = self.telemetry.server_event(
            headers, peer=_addr(scope.get("client")), op=f"{scope['method']} {scope['path']}"
        )
        if scope.get("client") and scope.get("server"):
            event.use_socket(_addr(scope["server"]), _addr(scope["client"]))
        body_head, resp_head = bytearray(), bytearray()

        async def counting_receive() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                event.req_bytes += len(chunk)
                _keep_head(body_head, chunk)
            return message

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                event.fail(f"HTTP {message['status']}")
            elif message["type"] == "http.response.start" and scope["method"] == "GET" and _is_event_stream(message):
                event.event = "stream"
            elif message["type"] == "http.response.body":
                event.resp_bytes += len(message.get("body", b""))
                _keep_head(resp_head, message.get("body", b""))
            await send(message)

        token = set_context(TraceContext(event.task_id, event.trace_id, event.call_id))
        run_token = adopt_run(headers)
        try:
            await self.app(scope, counting_receive, counting_send)
        except BaseException as exc:
            event.fail(exc)
            raise
        finally:
            _run.reset(run_token)
            _context.reset(token)
            event.op = _mcp_op(bytes(body_head)) or event.op
            if event.error is None and (reason := _jsonrpc_error(bytes(resp_head))):
                event.fail(reason)
            event.end_ns = time.time_ns()
            self.telemetry.writer.write(event)


_HEAD_LIMIT = 65536


def _keep_head(head: bytearray, chunk: bytes) -> None:
    if len(head) < _HEAD_LIMIT:
        head.extend(chunk[: _HEAD_LIMIT - len(head)])


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


def _is_event_stream(start: dict) -> bool:
    return any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in start.get("headers", ()))


def _jsonrpc_error(body: bytes) -> str | None:
    """The error a JSON-RPC (MCP) response carries inside an HTTP 200, if any: the body is the
    message, or (an MCP server answering with SSE) each event's `data:` line is one."""
    whole = _json(body)
    messages = (
        [whole] if whole is not None else [_json(line[5:]) for line in body.splitlines() if line.startswith(b"data:")]
    )
    return next(filter(None, map(_message_error, messages)), None)


def _message_error(message: Any) -> str | None:
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return None
    if isinstance(message.get("error"), dict):
        return f"JSON-RPC error {message['error'].get('code')}: {message['error'].get('message')}"
    result = message.get("result")
    if isinstance(result, dict) and result.get("isError"):
        texts = [c.get("text", "") for c in result.get("content", []) if isinstance(c, dict)]
        return "tool error: " + (" ".join(texts).strip() or "unknown")
    return _a2a_task_error(result) if isinstance(result, dict) else None


_A2A_FAILED = ("TASK_STATE_FAILED", "TASK_STATE_REJECTED", "failed", "rejected")
"""An A2A task's failed states, as A2A 1.0 and 0.3 spell them."""


def _a2a_task_error(result: dict) -> str | None:
    """For an A2A answer (a SendMessage result or one streamed event; 1.0 wraps the task or event in a
    field, 0.3 does not), the reason its task failed, if it did."""
    inner = [result.get(key) for key in ("task", "statusUpdate")]
    status = next((x["status"] for x in (*inner, result) if isinstance(x, dict) and "status" in x), None)
    if not isinstance(status, dict) or status.get("state") not in _A2A_FAILED:
        return None
    parts = (status.get("message") or {}).get("parts") or []
    texts = [p.get("text", "") for p in parts if isinstance(p, dict)]
    return f"task {status['state']}: " + (" ".join(texts).strip() or "unknown")


def _mcp_op(body: bytes) -> str | None:
    """For a JSON-RPC (MCP) request, its method and tool name, e.g. 'tools/call get_order'."""
    message = _json(body)
    if not isinstance(message, dict) or "method" not in message or message.get("jsonrpc") != "2.0":
        return None
    name = (message.get("params") or {}).get("name") if isinstance(message.get("params"), dict) else None
    return f"{message['method']} {name}" if name else str(message["method"])
