"""Where deploy put the lab's services: read from each node's config files during preflight."""

from __future__ import annotations

from lab.config import LabConfig
from workload.config import DEFAULT_PORTS, SERVICES
from workload.driver import Entry

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
        "address": address, "config_dir": CONFIG_DIR, "known": {s: DEFAULT_PORTS[s] for s in SERVICES},
        "llm_port": lab.llm.port if node == lab.llm_node.name else None, "collectors": COLLECTORS,
        "venvs": [f"{v}/bin/python" for v in VENVS], "runs": RUNS_DIR,
    }


def placement(checks: dict[str, dict]) -> dict[str, tuple[str, dict]]:
    """{service: (node, {host, port, health, ...})} from every node's preflight answer."""
    return {name: (node, service) for node, answer in checks.items() for name, service in answer["services"].items()}


def missing(checks: dict[str, dict]) -> list[str]:
    placed = placement(checks)
    return [s for s in (*SERVICES, "llm") if s not in placed]


def entry(checks: dict[str, dict]) -> Entry:
    """Where the driver submits tasks: the baseline gateway and Agent A, as deployed."""
    placed = placement(checks)

    def url(service: str) -> str:
        where = placed[service][1]
        return f"http://{where['host']}:{where['port']}"

    return Entry(baseline=url("baseline-gateway"), agent_a=url("agent-a"))
