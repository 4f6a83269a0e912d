"""The workload catalog (workload/topologies/): what the shipped one says, every bad topology refused
naming its file and field, and Ansible placing the services as the catalog says."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from workload.catalog import CATALOG, TOPOLOGIES, CatalogError, read
from workload.config import DEFAULT_PORTS, REQUIRED_PEERS, SERVICES, TOOL_ENDPOINTS
from workload.local import LocalStack

REPO = Path(__file__).resolve().parents[2]
TOOL = {"port": 9001, "role": "mcp_tools", "group": "tools", "builder": "workload.tools:build_tool_db"}


def write(directory: Path, name: str, topology: dict) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(topology, sort_keys=False))
    return path


def refusal(directory: Path) -> str:
    with pytest.raises(CatalogError) as caught:
        read(directory)
    return str(caught.value)


def test_the_shipped_catalog_starts_callees_first_and_names_every_entry():
    for name in SERVICES:
        assert all(SERVICES.index(callee) < SERVICES.index(name) for callee in REQUIRED_PEERS.get(name, ()))
    assert {w: s.entry for w, s in CATALOG.workloads.items()} == {
        "baseline": "baseline-gateway",
        "simple": "agent-a",
        "multihop": "agent-a",
        "fanout": "planner",
    }
    assert CATALOG.agents == ("agent-b", "agent-a", "worker", "planner") and CATALOG.needing("db") == (
        "tool-db",
        "baseline-shipping",
        "baseline-order",
    )
    # the gateway calls every service that answers one of its REST twins of the MCP tools
    assert set(REQUIRED_PEERS["baseline-gateway"]) == {owner for owner, _ in TOOL_ENDPOINTS.values()}
    assert len({DEFAULT_PORTS[s] for s in SERVICES}) == len(SERVICES)


def test_the_loopback_stack_gives_each_peer_its_catalog_path(tmp_path):
    peers = LocalStack(tmp_path, "postgresql://x").config("agent-a")["peers"]
    assert set(peers) == set(SERVICES)
    assert peers["tool-db"].endswith("/mcp") and peers["agent-b"].endswith("/mcp")
    assert not peers["baseline-order"].endswith("/mcp")


def test_a_second_topology_file_adds_its_services_and_workloads(tmp_path):
    for path in TOPOLOGIES.glob("*.yaml"):
        (tmp_path / path.name).write_text(path.read_text())
    extra = {
        "services": {"tool-extra": {**TOOL, "calls": ["tool-db"]}},
        "workloads": {"extra": {"entry": "tool-extra"}},
    }
    write(tmp_path, "zz-extra", extra)
    catalog = read(tmp_path)
    assert list(catalog.services)[-1] == "tool-extra" and catalog.workloads["extra"].entry == "tool-extra"


@pytest.mark.parametrize(
    ("topology", "said"),
    [
        ({"services": {"t": {**TOOL, "prot": 1}}}, "field services.t.prot: Extra inputs are not permitted"),
        ({"services": {"t": {**TOOL, "role": "db"}}}, "field services.t.role: Input should be 'agents'"),
        ({"services": {"t": {**TOOL, "builder": "no colon"}}}, "field services.t.builder: String should match"),
        (
            {"services": {"t": {**TOOL, "pick": "all"}}},
            "field services.t.pick: Input should be 'first', 'last' or 'each'",
        ),
        (
            {"services": {"t": {**TOOL, "group": "planners"}}},
            "field services.t.group: Input should be 'agents', 'tools', 'llm' or 'workers'",
        ),
        ({"services": {"t": {**TOOL, "calls": ["ghost"]}}}, "services.t.calls names 'ghost', which no topology"),
        (
            {"services": {"a": {**TOOL, "calls": ["b"]}, "b": {**TOOL, "port": 9002}}},
            "services.a.calls 'b', listed after it; list callees first",
        ),
        ({"services": {"a": TOOL, "b": TOOL}}, "services.b.port 9001 is a's too; give it a port of its own"),
        ({"services": {"t": TOOL}, "workloads": {"w": {"entry": "ghost"}}}, "workloads.w.entry 'ghost' is no service"),
        ({"workloads": {}}, "field services: Field required"),
    ],
)
def test_a_bad_topology_is_refused_naming_its_file_and_field(tmp_path, topology, said):
    path = write(tmp_path, "bad", topology)
    message = refusal(tmp_path)
    assert message.startswith(str(path)) and said in message, message


def test_a_service_defined_twice_names_both_files(tmp_path):
    first = write(tmp_path, "a", {"services": {"t": TOOL}})
    second = write(tmp_path, "b", {"services": {"t": {**TOOL, "port": 9002}}})
    assert refusal(tmp_path) == f"{second}: services.t is also defined in {first}; rename one"


def test_not_yaml_and_no_files_are_refused(tmp_path):
    assert "no topology files (*.yaml)" in refusal(tmp_path)
    (tmp_path / "x.yaml").write_text("services: [unclosed")
    assert refusal(tmp_path).startswith(f"{tmp_path / 'x.yaml'}: not YAML")


def test_a_lab_runs_the_services_and_workloads_its_groups_can_place():
    """fanout's workers run on every node of group workers; a lab without one runs neither them nor the
    planner that calls them, nor the workload entering there, and says which group is missing."""
    assert CATALOG.placeable(["agents", "tools", "llm"]) == tuple(s for s in SERVICES if s not in ("worker", "planner"))
    assert CATALOG.runnable(["agents", "tools", "llm"]) == ("baseline", "simple", "multihop")
    assert CATALOG.placeable(["agents", "tools", "llm", "workers"]) == SERVICES
    assert CATALOG.runnable(["agents", "tools", "llm", "workers"]) == ("baseline", "simple", "multihop", "fanout")
    assert CATALOG.reached("fanout") == ("planner", "tool-db", "worker", "tool-synth")
    assert CATALOG.unfilled("fanout", ["agents", "tools", "llm"]) == ("workers",)
    assert CATALOG.unfilled("multihop", ["agents", "tools", "llm"]) == ()
    assert (CATALOG.named("worker", "w1"), CATALOG.named("agent-b", "w1"), CATALOG.named("llm", "n")) == (
        "worker@w1",
        "agent-b",
        "llm",
    )


@pytest.mark.parametrize(
    "groups",
    [
        {"agents": ["n1", "n2", "n3"], "tools": ["n2"], "llm": ["n4"]},
        {"agents": ["n1", "n2"], "tools": ["n2"], "llm": ["n3"], "workers": ["w1", "w2", "w3"]},
    ],
    ids=["no workers", "three workers"],
)
def test_ansible_places_and_groups_the_services_as_the_catalog_says(tmp_path, groups):
    """The deploy reads the same files (inventory/group_vars/all.yml): each service on the first, the last
    or each node of its group, with its port and path, only the services the lab can place
    (Catalog.placeable), each deploy role's services in start order, and on each node the roles that have
    a service there (deploy.yml runs a role only there)."""
    inventory = tmp_path / "inventory"
    inventory.mkdir()
    (inventory / "group_vars").symlink_to(REPO / "inventory" / "group_vars")
    hosts = {
        "all": {
            "children": {
                group: {"hosts": {h: {"ansible_host": "127.0.0.1"} for h in names}} for group, names in groups.items()
            }
        }
    }
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    here = "dict(groups['all'] | zip(groups['all'] | map('extract', hostvars, 'lab_roles_here')))"
    shown = "{{ {'services': lab_services, 'roles': lab_services_by_role, 'here': " + here + "} | to_json }}"
    result = subprocess.run(
        [str(REPO / ".venv" / "bin" / "ansible"), "n1", "-i", str(inventory), "--playbook-dir", str(REPO)]
        + ["-c", "local", "-m", "ansible.builtin.debug", "-a", f"msg={shown}"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={"ANSIBLE_NOCOLOR": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    placed = json.loads(yaml.safe_load(result.stdout.split(" => ", 1)[1])["msg"])  # "n1 | SUCCESS => msg: ..."
    picks = {"first": lambda members: members[:1], "last": lambda members: members[-1:], "each": list}
    expected = {
        name: {
            "hosts": picks[spec.pick](groups[spec.group]),
            "port": spec.port,
            "path": spec.path,
            "each": spec.pick == "each",
        }
        for name, spec in CATALOG.services.items()
        if name in CATALOG.placeable(groups)
    }
    assert placed["services"] == expected
    assert placed["roles"] == {
        role: [name for name, spec in CATALOG.services.items() if spec.role == role]
        for role in ("mcp_tools", "baseline", "agents")
    }
    assert {host: set(roles) for host, roles in placed["here"].items()} == {
        host: {CATALOG.services[name].role for name, where in expected.items() if host in where["hosts"]}
        for host in {h for members in groups.values() for h in members}
    }
