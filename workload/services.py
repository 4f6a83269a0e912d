"""Which builder makes which service, and how one is started from its config file."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workload.catalog import CATALOG
from workload.config import ServiceConfig, load_config
from workload.telemetry import Telemetry
from workload.web import serve

AGENTS = CATALOG.agents


def builder(service: str) -> Callable[[ServiceConfig, Telemetry], Any]:
    """The catalog's builder of `service`, imported only when that service starts: a baseline service
    never loads the agents' LLM and MCP client stacks (seconds on a node, a minute under TCG)."""
    module, name = CATALOG.services[service].builder.split(":")
    return getattr(importlib.import_module(module), name)


def agent_id(service: str, node: str) -> str | None:
    """An agent's id in telemetry: its service, or its instance (`<service>@<node>`) for one on each node."""
    return CATALOG.named(service, node) if service in AGENTS else None


def run_service(service: str, config_path: Path) -> None:
    """Load the config (ConfigError on a bad one), build the service and serve until stopped."""
    config = load_config(config_path, service)
    telemetry = Telemetry(config.node, service, agent_id(service, config.node), config.telemetry_dir)
    app = builder(service)(config, telemetry)
    serve(app, telemetry, config.host, config.listen_port(service), config.api_token)
