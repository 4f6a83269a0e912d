"""The fanout topology on seven nspawn nodes: the three of every lab and four in group workers, each of
which runs a worker (`pick: each`). `lab up`, `ansible-playbook deploy.yml` and `lab experiment` as a
user runs them; the run completes with every node's probes pulled, and the planner's hand-offs reach
the workers on their own nodes."""

from __future__ import annotations

import time

import httpx
import pytest
import yaml

import analysis
from tests.conftest import lab_cli, write_lab
from tests.integration.conftest import playbook
from tests.integration.test_experiment import COUNTED, ROOMY, assert_files_intact, manifest, run_dir, scenario
from workload.handoff import SEND_OP, STREAM_OP

pytestmark = pytest.mark.integration

NAME, PREFIX = "fo", "10.86.0"
WORKERS = tuple(f"worker-{i}" for i in range(1, 5))
NODES = ("agent-a", "agent-b", "llm", *WORKERS)
TASKS = 7
"""One task of each kind: two of them (a parcel's hub, a delivery's risk) need the logistics tools only
the workers have."""


@pytest.fixture(scope="module")
def fanout_lab(tmp_path_factory, node_image):
    directory = tmp_path_factory.mktemp("fanout")
    config = write_lab(directory, NAME, PREFIX, provider="nspawn")
    lab = yaml.safe_load(config.read_text())
    lab["nodes"] += [
        {"name": name, "groups": ["workers"], "address": f"{PREFIX}.{21 + i}"} for i, name in enumerate(WORKERS)
    ]
    config.write_text(yaml.safe_dump(lab, sort_keys=False))
    try:
        started = time.monotonic()
        lab_cli(config, "up")
        up_s = time.monotonic() - started
        deployed = playbook(config)
        assert deployed.returncode == 0, deployed.stdout[-6000:] + deployed.stderr[-3000:]
        deploy_s = time.monotonic() - started - up_s
        path = scenario(
            directory,
            "fanout-small",
            workload="fanout",
            tasks={"count": TASKS, "seed": 1},
            load={"concurrency": 1},
            task_timeout_s=900,
            timeouts=ROOMY,
        )
        lab_cli(config, "experiment", str(path), timeout=1800)
        print(f"fanout lab of {len(NODES)} nodes: up {up_s:.1f} s, deploy {deploy_s:.1f} s")
        yield config, run_dir(config, "fanout-small")
    finally:
        lab_cli(config, "teardown", check=False)


def test_each_worker_node_serves_its_own_worker_and_card(fanout_lab):
    config, run = fanout_lab
    m = manifest(run)
    assert m["placement"] == {
        "planner": "agent-a",
        "tool-db": "agent-b",
        "tool-synth": "agent-b",
        **{f"worker@{w}": w for w in WORKERS},
        "llm": "llm",
    }
    for i, worker in enumerate(WORKERS):
        card = httpx.get(f"http://{PREFIX}.{21 + i}:8103/.well-known/agent-card.json", timeout=10).json()
        assert card["name"] == f"Logistics agent on {worker}"
        assert card["supportedInterfaces"][0]["url"] == f"http://{PREFIX}.{21 + i}:8103/"
    # the three nodes every lab has do not run a worker
    assert lab_cli(config, "ssh", "agent-b", "--", "test", "-e", "/etc/lab/worker.yaml", check=False).returncode == 1


def test_the_fanout_run_completes_with_every_nodes_probes_pulled(fanout_lab):
    _, run = fanout_lab
    m = manifest(run)
    assert m["tasks"]["total"] == TASKS and m["tasks"]["ok"] == TASKS, m["faults"]
    assert set(m["probes"]) == set(NODES)
    for node, by_probe in m["probes"].items():
        assert all(p["started"] and p["state"] == "stopped" for p in by_probe.values()), (node, by_probe)
    for node in ("agent-a", "agent-b", "llm"):  # a worker's node is busy only when the planner handed it work
        assert all(m["probes"][node][name]["records"] > 0 for name in COUNTED), node
    assert_files_intact(run, m["files"])
    for node in NODES:
        assert f"nodes/{node}/probes/status.json" in m["files"]


def test_the_planners_hand_offs_reach_the_workers_on_their_nodes(fanout_lab):
    """Whether and how widely the planner fans out is the model's decision; every hand-off it made went
    to a worker instance on that worker's node, and the analysis joined it to a flow there, which that
    node's probes saw."""
    _, run = fanout_lab
    result = analysis.analyze_run(run)
    calls = result.joined.calls
    hand_offs = calls[(calls["kind"] == "agent") & calls["op"].isin([STREAM_OP, SEND_OP])]
    delegations = int(result.per_task["delegations"].fillna(0).sum())
    print(f"fanout, {TASKS} tasks: {delegations} subtasks handed off, to {sorted(set(hand_offs['peer']))}")
    assert len(hand_offs) == delegations
    assert (hand_offs["client_service"] == "planner").all() and (hand_offs["server_service"] == "worker").all()
    assert (hand_offs["peer"] == "worker@" + hand_offs["server_node"]).all()  # the instance on its own node
    assert set(hand_offs["call_id"]) <= set(result.joined.used["call_id"])  # each joined to its connection
    probes = manifest(run)["probes"]
    assert all(probes[node]["lifetime"]["records"] > 0 for node in set(hand_offs["server_node"]))
