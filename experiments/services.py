"""Where deploy put the lab's services: read from each node's config files during preflight."""

from __future__ import annotations

from lab.config import LabConfig
from workload.catalog import CATALOG, service_of
from workload.config import DEFAULT_PORTS, NEEDS_LLM, SERVICES
from workload.driver import Entry

ENTRY = {name: spec.entry for name, spec in CATALOG.workloads.items()}
"""The service each workload's tasks enter at."""

CONFIG_DIR = "/etc/lab"
"""The roles write each service's config here as <service>.yaml (roles/lab_service)."""
TELEMETRY_DIR = "/var/log/lab/telemetry"
COLLECTORS = "/usr/local/bin/lab-collectors"
"""The probe runner's command the collectors role installs on every node."""
RUNS_DIR = "/var/lib/lab/runs"
"""Each run's directory on a node (probes, telemetry copy) until the controller pulled it."""
VENVS = ["/opt/lab/venv", "/opt/lab/llm"]
"""The workload's venvs (services, LLM server): the first present gives the workload version."""


def preflight_args(node: str, address: str, lab: LabConfig) -> dict:
    return {
        "address": address,
        "config_dir": CONFIG_DIR,
        "known": {s: DEFAULT_PORTS[s] for s in SERVICES},
        "llm_port": lab.llm.port if node == lab.llm_node.name else None,
        "collectors": COLLECTORS,
        "venvs": [f"{v}/bin/python" for v in VENVS],
        "runs": RUNS_DIR,
    }


def placement(checks: dict[str, dict]) -> dict[str, tuple[str, dict]]:
    """{service: (node, {host, port, health, ...})} from every node's preflight answer; a `pick: each`
    service once per node, as its instance (`<service>@<node>`)."""
    return {
        CATALOG.named(name, node): (node, service)
        for node, answer in checks.items()
        for name, service in answer["services"].items()
    }


def needed(workload: str) -> list[str]:
    """The services a workload's tasks reach: its entry and every peer it calls, and the LLM
    where an agent is among them (so a baseline run needs no LLM deployed)."""
    reached = list(CATALOG.reached(workload))
    return reached + (["llm"] if any(s in NEEDS_LLM for s in reached) else [])


def placed(checks: dict[str, dict], workload: str) -> dict[str, str]:
    """{service or instance: node} for every service `workload` reaches, as deployed."""
    reached = needed(workload)
    return {name: node for name, (node, _) in placement(checks).items() if service_of(name) in reached}


def missing(checks: dict[str, dict], workload: str) -> list[str]:
    deployed = {service_of(name) for name in placement(checks)}
    return [s for s in needed(workload) if s not in deployed]


def url(checks: dict[str, dict], service: str) -> str:
    where = placement(checks)[service][1]
    return f"http://{where['host']}:{where['port']}"


def entry(checks: dict[str, dict], workload: str, token: str) -> Entry:
    """Where the driver submits this workload's tasks, as deployed, with the lab's bearer token."""
    return Entry({ENTRY[workload]: url(checks, ENTRY[workload])}, token=token)
