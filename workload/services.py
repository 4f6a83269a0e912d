"""Which builder makes which service, and how one is started from its config file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from workload.agents import build_agent_a, build_agent_b
from workload.baseline import build_gateway, build_order_service, build_shipping_service
from workload.config import ServiceConfig, load_config
from workload.telemetry import Telemetry
from workload.tools import build_tool_db, build_tool_synth
from workload.web import serve

BUILDERS: dict[str, Callable[[ServiceConfig, Telemetry], Any]] = {
    "agent-a": build_agent_a,
    "agent-b": build_agent_b,
    "tool-db": build_tool_db,
    "tool-synth": build_tool_synth,
    "baseline-gateway": build_gateway,
    "baseline-order": build_order_service,
    "baseline-shipping": build_shipping_service,
}
AGENTS = ("agent-a", "agent-b")


def run_service(service: str, config_path: Path) -> None:
    """Load the config (ConfigError on a bad one), build the service and serve until stopped."""
    config = load_config(config_path, service)
    telemetry = Telemetry(config.node, service, service if service in AGENTS else None, config.telemetry_dir)
    app = BUILDERS[service](config, telemetry)
    serve(app, telemetry, config.host, config.listen_port(service), config.api_token)
