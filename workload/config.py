"""The config file each service is started with (`python -m workload serve SERVICE --config FILE`)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workload.catalog import CATALOG, service_of

SERVICES: tuple[str, ...] = tuple(CATALOG.services)
"""Every service of the catalog (workload/topologies/), in start order."""
DEFAULT_PORTS: dict[str, int] = {
    "llm": 8000,
    **{name: spec.port for name, spec in CATALOG.services.items()},
    "postgres": 5432,
}
TOOL_ENDPOINTS: dict[str, tuple[str, str]] = {
    "get_order": ("baseline-order", "/orders/{order_id}"),
    "get_customer": ("baseline-order", "/customers/{customer_id}"),
    "get_shipment": ("baseline-shipping", "/shipments/{order_id}"),
    "track_parcel": ("tool-synth", "/parcels/{tracking_no}"),
    "carrier_status": ("tool-synth", "/carriers/{carrier}"),
}
"""The REST endpoint standing for each MCP tool in the baseline chain: the service that answers it
and its path, whose one parameter is the tool's one argument (workload/baseline.py)."""
REQUIRED_PEERS: dict[str, tuple[str, ...]] = {name: spec.calls for name, spec in CATALOG.services.items() if spec.calls}
"""Which peers (by logical name) each service calls."""


def bearer(token: str | None) -> dict[str, str]:
    """The Authorization header that carries `token` (RFC 6750), or none."""
    return {"authorization": f"Bearer {token}"} if token else {}


def endpoints_of(service: str) -> dict[str, str]:
    """{tool: path} of the REST endpoints `service` answers (TOOL_ENDPOINTS)."""
    return {tool: path for tool, (owner, path) in TOOL_ENDPOINTS.items() if owner == service}


LLM_MAX_TOKENS = 160
"""The most tokens an agent asks the LLM for in one decision (workload/agents.py): room for four
tool calls, or for an answer of two or three sentences."""
AGENTS_PER_TASK = {name: spec.agents for name, spec in CATALOG.workloads.items() if spec.agents}
"""How many agents' loops deep a task of each agentic workload may go, one after another; each makes at
most the `max_steps` knob's LLM calls."""
NEEDS_DB = CATALOG.needing("db")
NEEDS_LLM = CATALOG.needing("llm")


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the field and the fix."""


class Timeouts(BaseModel):
    model_config = ConfigDict(extra="forbid")
    llm_s: float = Field(60.0, gt=0)
    tool_s: float = Field(20.0, gt=0)
    agent_s: float = Field(120.0, gt=0)
    service_s: float = Field(10.0, gt=0)
    db_s: float = Field(5.0, gt=0)
    task_s: float = Field(180.0, gt=0)


class SynthConfig(BaseModel):
    """Shape of tool server 2's synthetic work."""

    model_config = ConfigDict(extra="forbid")
    response_bytes: int = Field(2048, ge=0, le=16 * 1024 * 1024)
    latency_ms: float = Field(20.0, ge=0, le=60_000)
    fanout: int = Field(2, ge=0, le=64)
    # where fan-out calls go; default: this server's own /backend endpoint
    downstream_url: str | None = None


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: str = Field(min_length=1)
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535)
    telemetry_dir: Path = Path("/var/log/lab/telemetry")
    peers: dict[str, str] = Field(default_factory=dict)
    db_dsn: str | None = None
    llm_url: str | None = None  # OpenAI-compatible base URL, e.g. http://llm:8000/v1
    llm_model: str = "lab-model"
    synth: SynthConfig = Field(default_factory=SynthConfig)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    # The lab's bearer token (made per lab by `lab up`): every request to this service but its
    # health endpoint and Agent Card must carry it, and the service sends it on each of its own
    # requests (peers and the LLM). None: the service takes any caller and sends none.
    api_token: str | None = Field(None, min_length=16, pattern=r"^[A-Za-z0-9._~+/-]+=*$")

    def listen_port(self, service: str) -> int:
        return self.port or DEFAULT_PORTS[service]

    def own_url(self, service: str) -> str:
        """This service's own base URL, as its peers reach it: its listen address and port (loopback
        when it listens on every address)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "", "::") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.listen_port(service)}"

    def rest_url(self, peer: str) -> str:
        """The peer's base URL for REST calls: its peer URL without the path (an MCP server's names /mcp)."""
        url = urlsplit(self.peers[peer])
        return f"{url.scheme}://{url.netloc}"

    def instances(self, service: str) -> dict[str, str]:
        """{peer name: URL} of every instance of `service` among the peers: the one entry named `service`,
        or each `<service>@<node>` of a `pick: each` service, in the peers' order."""
        return {name: url for name, url in self.peers.items() if service_of(name) == service}

    def check_for(self, service: str) -> None:
        """Raise ConfigError unless this config has what `service` needs."""
        missing = [f"peers.{p}" for p in REQUIRED_PEERS.get(service, ()) if not self.instances(p)]
        if service in NEEDS_DB and not self.db_dsn:
            missing.append("db_dsn")
        if service in NEEDS_LLM and not self.llm_url:
            missing.append("llm_url")
        if missing:
            raise ConfigError(f"{service} needs {', '.join(missing)} in its config file")


def load_config(path: Path, service: str) -> ServiceConfig:
    if service not in SERVICES:
        raise ConfigError(f"unknown service {service!r}; choose one of {', '.join(SERVICES)}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        config = ServiceConfig.model_validate(data or {})
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {_first_problem(exc)}") from exc
    config.check_for(service)
    return config


def _first_problem(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return f"field {'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}"
    return str(exc).splitlines()[0]
