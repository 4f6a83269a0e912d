"""The fault matrix on the deployed nspawn lab: faults a scenario injects while its tasks run (a link
dropping every packet, a service SIGKILLed, a node powered off, a disk filled, the LLM server killed
under the agents). Each time the manifest names the fault, the tasks it failed say why, the other
nodes' records are pulled intact, and the next run is clean. A controller SIGKILLed mid-run, and a
probe killed, are test_experiment.py's."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import lab_cli
from tests.integration.test_experiment import ROOMY, assert_files_intact, lines, manifest, run_dir, scenario

pytestmark = pytest.mark.integration


def wait_for_the_llm(config: Path) -> None:
    """Until the LLM server on the llm node answers its health endpoint (it loads the model at boot)."""
    address = next(n["address"] for n in yaml.safe_load(config.read_text())["nodes"] if n["name"] == "llm")
    health = f"curl -sf -o /dev/null http://{address}:8000/health"
    lab_cli(config, "ssh", "llm", "--", f"for i in $(seq 180); do {health} && exit 0; sleep 1; done; exit 1")


def faults_of(m: dict, node: str) -> list[str]:
    return [f["what"] for f in m["faults"] if f["node"] == node]


@pytest.fixture(scope="module")
def faulty(deployed_lab, tmp_path_factory):
    """A baseline run at 4 tasks/s (15 s) through which agent-b (the order and shipping services) loses its link for
    5 s, baseline-order is SIGKILLed, agent-a's disk cannot be filled (a container's disk is the
    host's) and the LLM node is powered off; then `lab up` and a clean run."""
    config = deployed_lab.config
    path = scenario(
        tmp_path_factory.mktemp("scenarios"),
        "baseline-faults",
        workload="baseline",
        tasks={"count": 60, "seed": 6},
        load={"rate_per_s": 4},
        task_timeout_s=4,
        inject=[
            {"kind": "fill_disk", "node": "agent-a", "at_s": 0.5, "for_s": 5},
            {"kind": "link_down", "node": "agent-b", "at_s": 2, "for_s": 5},
            {"kind": "kill_service", "node": "agent-b", "service": "baseline-order", "at_s": 9},
            {"kind": "stop_node", "node": "llm", "at_s": 11},
        ],
    )
    run = lab_cli(config, "experiment", str(path), timeout=600)
    return config, run_dir(config, "baseline-faults"), run


def test_each_injected_fault_is_named_in_the_manifest(faulty):
    _, run, result = faulty
    m = manifest(run)
    injected = {i["kind"]: i for i in m["injected"]}
    assert list(injected) == ["fill_disk", "link_down", "kill_service", "stop_node"]
    assert "container" in injected["fill_disk"]["error"] and "libvirt" in injected["fill_disk"]["error"]
    assert injected["link_down"]["done"] == {"iface": "host0"} and injected["link_down"]["error"] is None
    assert injected["kill_service"]["done"]["unit"] == "lab-baseline-order" and injected["kill_service"]["done"]["pid"]
    assert injected["stop_node"]["error"] is None and injected["stop_node"]["when_ns"]
    assert any(w.startswith("injected link_down for 5 s at 2 s") for w in faults_of(m, "agent-b"))
    assert any(w.startswith("injected kill_service baseline-order at 9 s") for w in faults_of(m, "agent-b"))
    assert any("powered off by an injected fault" in w for w in faults_of(m, "llm"))
    assert "injected link_down" in result.stdout + result.stderr  # said as it happened, too
    report = (run / "report.html").read_text()
    assert "faults injected" in report and "link_down" in report


def test_the_tasks_the_faults_failed_say_why_and_the_rest_answered(faulty):
    _, run, _ = faulty
    m = manifest(run)
    results = lines(run / "results.jsonl")
    failed = [r for r in results if not r["ok"]]
    assert failed and all(r["error"] for r in failed)
    assert any("timed out" in r["error"] or "Timeout" in r["error"] for r in failed), failed  # the link was down
    assert m["tasks"]["ok"] == sum(r["ok"] for r in results) > len(results) // 2
    named = [w for w in faults_of(m, "controller") if w.startswith("task ")]
    assert len(named) == len(failed)


def test_the_other_nodes_records_are_pulled_intact(faulty):
    _, run, _ = faulty
    m = manifest(run)
    for node in ("agent-a", "agent-b"):
        assert_files_intact(run, m["files"], f"nodes/{node}/")
        assert (run / "nodes" / node / "probes" / "status.json").is_file()
    assert not (run / "nodes" / "llm" / "probes").exists()  # powered off: nothing asked of it after


def test_after_lab_up_the_next_run_is_clean(faulty, tmp_path):
    config, _, _ = faulty
    lab_cli(config, "up", timeout=600)  # starts the powered-off node again, its state kept
    wait_for_the_llm(config)
    path = scenario(tmp_path, "baseline-after-faults", workload="baseline", tasks={"count": 10, "seed": 6})
    lab_cli(config, "experiment", str(path), timeout=300)
    m = manifest(run_dir(config, "baseline-after-faults"))
    assert m["faults"] == [] and m["tasks"]["ok"] == 10
    assert_files_intact(run_dir(config, "baseline-after-faults"), m["files"])


def test_the_llm_server_killed_under_the_agents(deployed_lab, tmp_path):
    """SIGKILL to the LLM server while Agent A waits on it: that task fails naming the LLM hop, systemd
    restarts the server and the next tasks are answered."""
    config = deployed_lab.config
    wait_for_the_llm(config)
    path = scenario(
        tmp_path,
        "simple-llm-killed",
        workload="simple",
        tasks={"count": 3, "seed": 1},
        load={"rate_per_s": 0.05},  # seeded arrivals at 12.7, 18.1 and 33.5 s: the first mid-call at the kill
        task_timeout_s=600,
        timeouts=ROOMY,
        inject=[{"kind": "kill_service", "node": "llm", "service": "llm", "at_s": 13.7}],
    )
    started = time.monotonic()
    lab_cli(config, "experiment", str(path), timeout=900)
    run = run_dir(config, "simple-llm-killed")
    m = manifest(run)
    [killed] = m["injected"]
    assert killed["done"]["unit"] == "lab-llm" and killed["error"] is None, killed
    first, *_, last = sorted(lines(run / "results.jsonl"), key=lambda r: r["start_ns"])
    assert not first["ok"] and first["error"].startswith("llm: "), first
    assert last["ok"], last["error"]  # 20 s later the restarted server answers
    for node in ("agent-a", "agent-b", "llm"):
        assert_files_intact(run, m["files"], f"nodes/{node}/")
    assert time.monotonic() - started < 900
