"""Which builder makes which service, and how one is started from its config file."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workload.config import ServiceConfig, load_config
from workload.telemetry import Telemetry
from workload.web import serve

# module and function of each service's builder, imported when that service starts: a baseline
# service never loads the agents' LLM and MCP client stacks (seconds on a node, a minute under TCG)
BUILDERS: dict[str, tuple[str, str]] = {
    "agent-a": ("workload.agents", "build_agent_a"),
    "agent-b": ("workload.agents", "build_agent_b"),
    "tool-db": ("workload.tools", "build_tool_db"),
    "tool-synth": ("workload.tools", "build_tool_synth"),
    "baseline-gateway": ("workload.baseline", "build_gateway"),
    "baseline-order": ("workload.baseline", "build_order_service"),
    "baseline-shipping": ("workload.baseline", "build_shipping_service"),
}
AGENTS = ("agent-a", "agent-b")


def builder(service: str) -> Callable[[ServiceConfig, Telemetry], Any]:
    module, name = BUILDERS[service]
    return getattr(importlib.import_module(module), name)


def run_service(service: str, config_path: Path) -> None:
    """Load the config (ConfigError on a bad one), build the service and serve until stopped."""
    config = load_config(config_path, service)
    telemetry = Telemetry(config.node, service, service if service in AGENTS else None, config.telemetry_dir)
    app = builder(service)(config, telemetry)
    serve(app, telemetry, config.host, config.listen_port(service), config.api_token)
