"""`lab experiment` end to end on a deployed nspawn lab: a small multihop run leaves a
self-describing run directory; a probe killed mid-run, Ctrl-C and an impairment are recorded
in the manifest while every node's data is still pulled and checked."""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
from a2a.helpers import get_artifact_text, new_text_message
from a2a.types import Role, SendMessageRequest, TaskState

import analysis
from tests.analysis.checks import (
    assert_baseline_matches_the_call_graph,
    assert_every_agentic_task_has_an_llm_flow,
    assert_flows_agree_with_handshakes,
)
from tests.conftest import lab_cli, start_lab_cli
from workload.config import LLM_MAX_TOKENS
from workload.tasks import hub_of, make_tasks

pytestmark = pytest.mark.integration

NODES = ("agent-a", "agent-b", "llm")
# The CPU LLM on a two-core runner busy with other work can be several times slower than on a quiet
# one: room enough that the preflight's speed check refuses none of these runs (it has its own test).
ROOMY = {"llm_s": 300, "tool_s": 60, "agent_s": 600}
COUNTED = ("lifetime", "connect", "rtt", "pcap:host0")  # retransmissions need loss: started, maybe 0 records


def scenario(directory: Path, name: str, **config) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_dir(config: Path, name: str) -> Path:
    """The newest run of this scenario."""
    return max((config.parent / "runs").glob(f"*-{name}"))


def manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


def assert_files_intact(run: Path, files: dict, prefix: str = "") -> None:
    listed = {rel: meta for rel, meta in files.items() if rel.startswith(prefix)}
    assert listed, f"no files under {prefix}"
    for rel, meta in listed.items():
        data = (run / rel).read_bytes()
        assert len(data) == meta["bytes"] and hashlib.sha256(data).hexdigest() == meta["sha256"], rel


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_experiment(config: Path, path: Path) -> subprocess.Popen[str]:
    return start_lab_cli(config, "experiment", str(path))


def remote_status(config: Path, node: str) -> dict | None:
    newest = "'cat \"$(ls -td /var/lib/lab/runs/*/ | head -1)probes/status.json\"'"
    result = lab_cli(config, "ssh", node, "--", "sudo", "sh", "-c", newest, check=False)
    return json.loads(result.stdout) if result.returncode == 0 and result.stdout.strip() else None


def wait_running(config: Path, node: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = remote_status(config, node)
        if status and status["state"] == "running":
            return status
        time.sleep(1)
    raise AssertionError(f"the probes on {node} did not run within {timeout_s} s")


@pytest.fixture(scope="module")
def multihop(deployed_lab, tmp_path_factory):
    config = deployed_lab.config
    path = scenario(
        tmp_path_factory.mktemp("scenarios"),
        "multihop-small",
        workload="multihop",
        tasks={"count": 3, "seed": 1},
        load={"concurrency": 1},
        task_timeout_s=900,
        timeouts=ROOMY,
    )
    started = time.monotonic()
    result = lab_cli(config, "experiment", str(path), timeout=900)
    return config, run_dir(config, "multihop-small"), result, time.monotonic() - started


def test_multihop_run_directory_describes_the_run(multihop):
    _, run, result, wall_s = multihop
    print(f"multihop, 3 tasks: {wall_s:.1f} s wall")
    m = manifest(run)
    assert m["run_id"] == run.name and m["scenario"]["name"] == "multihop-small"
    assert m["scenario"]["config"]["workload"] == "multihop" and m["lab"]["name"] == "tx"
    assert m["provider"] == "nspawn" and m["accelerator"] == "container" and m["image"]
    assert m["git"]["commit"] and set(m["versions"]["nodes"]) == set(NODES)
    assert m["versions"]["llm"]["model"] and m["versions"]["controller"]["packages"]["fabric"]
    libraries = m["versions"]["nodes"]["agent-a"]["libraries"]  # the clients whose defaults shape connections
    assert libraries["openai"] and libraries["httpx"] and libraries["mcp"] and libraries["langchain-mcp-adapters"]
    assert m["started_at_ns"] < m["ended_at_ns"]
    assert m["tasks"]["total"] == 3 and m["tasks"]["ok"] == 3 and m["tasks"]["failed"] == 0
    assert m["scenario"]["config"]["knobs"]["tool_calling"] == "json_schema"
    assert m["placement"] == {  # every service the run reached, where it ran
        "agent-a": "agent-a",
        "agent-b": "agent-b",
        "tool-db": "agent-b",
        "tool-synth": "agent-b",
        "llm": "llm",
    }
    assert str(run) in result.stdout and "tasks" in result.stdout


def test_every_probe_on_every_node_started_and_recorded(multihop):
    _, run, _, _ = multihop
    probes = manifest(run)["probes"]
    assert set(probes) == set(NODES)
    for node, by_probe in probes.items():
        assert all(p["started"] and p["state"] == "stopped" for p in by_probe.values()), (node, by_probe)
        assert "state" not in by_probe  # opt-in
        for name in COUNTED:
            assert by_probe[name]["records"] > 0, (node, name)
    assert probes["agent-b"]["pcap:lo"]["records"] > 0  # agent-b's services call each other over loopback
    assert not [f for f in manifest(run)["faults"] if "probe" in f["what"]]


def test_each_nodes_cpu_and_offloads_are_recorded_and_left_alone_by_default(multihop):
    _, run, _, _ = multihop
    m = manifest(run)
    assert set(m["conditions"]) == {*NODES, "controller"} and m["offload"] == {}
    for node in NODES:
        start, end = m["conditions"][node]["start"], m["conditions"][node]["end"]
        assert start["iface"] == "host0" and start["offload"]["gso"] in ("on", "off")
        assert sum(end["cpu"].values()) > sum(start["cpu"].values())
    assert "<h2>Validation</h2>" in (run / "report.html").read_text()


def test_offloads_turned_off_for_a_run_give_wire_sized_packets_and_are_restored(deployed_lab, tmp_path):
    config = deployed_lab.config
    path = scenario(tmp_path, "baseline-wire", workload="baseline", tasks={"count": 4, "seed": 6}, offload="off")
    lab_cli(config, "experiment", str(path), timeout=300)
    run = run_dir(config, "baseline-wire")
    m = manifest(run)
    assert set(m["offload"]) == {*NODES, "controller"}, m["faults"]  # the host's SSH and requests leave its bridge
    for node, changed in m["offload"].items():
        assert all(value.startswith("off") or "fixed" in value for value in changed["after"].values()), changed
        assert changed["restored"] == changed["before"], node
        assert m["conditions"][node]["start"]["offload"] == changed["after"]
    packets = analysis.analyze_run(run).joined.packets
    lab_link = packets[packets["iface"] == "host0"]  # loopback has no wire: its MTU is 64 KB
    assert lab_link["wire_len"].max() <= 1514, lab_link.nlargest(3, "wire_len")[["saddr", "daddr", "dport", "wire_len"]]
    # the gateway on agent-a calls the order and shipping services on agent-b over the lab network, as
    # Agent A calls the tool servers there (equal terms, #18)
    assert m["placement"]["baseline-gateway"] == "agent-a" and m["placement"]["baseline-order"] == "agent-b"
    crossing = lab_link[lab_link["daddr"] == deployed_lab.state.node("agent-b").address]
    assert {8302, 8303} <= set(crossing["dport"]), sorted(set(lab_link["dport"]))


def test_clock_offsets_at_start_and_end(multihop):
    _, run, _, _ = multihop
    offsets = manifest(run)["clock_offsets"]
    for node in NODES:
        for when in ("start", "end"):
            measured = offsets[node][when]
            print(f"clock {node} {when}: {measured['offset_ns']} ± {measured['uncertainty_ns']} ns")
            assert measured["samples"] >= 10 and 0 < measured["uncertainty_ns"] < 5_000_000
            assert abs(measured["offset_ns"]) < 5_000_000  # containers share the host's clock


def test_every_pulled_file_matches_its_checksum(multihop):
    config, run, _, _ = multihop
    files = manifest(run)["files"]
    assert_files_intact(run, files)
    for node in NODES:
        assert f"nodes/{node}/probes/status.json" in files and f"nodes/{node}/probes/pcap-host0.pcap" in files
    assert "results.jsonl" in files and "telemetry/driver.jsonl" in files
    leftover = lab_cli(config, "ssh", "agent-a", "--", "test", "-e", f"/var/lib/lab/runs/{run.name}", check=False)
    assert leftover.returncode == 1  # the node's copy is removed once every file matched


def test_telemetry_holds_every_task(multihop):
    _, run, _, _ = multihop
    results = lines(run / "results.jsonl")
    tasks = {r["task_id"] for r in results}
    assert len(results) == 3 and all(r["repetition"] == 1 and r["warmup"] is False for r in results)
    assert all(isinstance(r["correct"], bool) for r in results)  # checked against the task's facts
    assert all(r["steps"] >= 1 and r["llm_calls"] >= r["steps"] and r["kind"] for r in results), results
    handed = {r["task_id"] for r in results if r["delegations"]}  # the model's choice: Agent B sees only those
    used_db = {r["task_id"] for r in results if r["tool_calls"] > r["delegations"]}
    for node, service, wanted in (("agent-a", "agent-a", tasks), ("agent-b", "agent-b", handed)):
        seen = {e["task_id"] for e in lines(run / "nodes" / node / "telemetry" / f"{service}.jsonl")}
        assert wanted <= seen, (service, wanted - seen)
    db_seen = {e["task_id"] for e in lines(run / "nodes" / "agent-b" / "telemetry" / "tool-db.jsonl")}
    assert used_db <= db_seen, used_db - db_seen
    assert tasks <= {e["task_id"] for e in lines(run / "telemetry" / "driver.jsonl")}


FACTS_SQL = {  # the first three tasks of seed 1: the facts a correct answer states, in the deployed database
    "order_status": "select status from orders where order_id = '{o}'",
    "customer_city": "select c.city from orders o join customers c using (customer_id) where o.order_id = '{o}'",
    "parcel_hub": "select tracking_no from shipments where order_id = '{o}'",
}


def test_correctness_is_recorded_against_the_deployed_database(multihop):
    """Seed 1's first tasks ask for an order's status, a customer's city and a parcel's hub. Each
    result's `correct` is whether its answer states the fact the database on agent-b holds (the hub
    is tool-synth's, derived from the parcel's tracking number): read here with psql, not from the
    task set the controller used."""
    config, run, _, _ = multihop
    secret = (config.parent / ".lab" / "secrets" / "db_password").read_text()
    agent_b = next(n["address"] for n in yaml.safe_load(config.read_text())["nodes"] if n["name"] == "agent-b")
    dsn = f"postgresql://lab@{agent_b}:5432/lab"
    tasks = {t.task_id: t for t in make_tasks(1, 3)}
    results = lines(run / "results.jsonl")
    assert [tasks[r["task_id"]].kind for r in results] == list(FACTS_SQL)
    for r in results:
        task = tasks[r["task_id"]]
        query = FACTS_SQL[task.kind].format(o=task.order_id)
        cmd = f'PGPASSWORD={secret} psql --no-psqlrc -tA -c "{query}" {dsn}'
        fact = lab_cli(config, "ssh", "agent-a", "--", cmd).stdout.strip()
        fact = hub_of(f"parcel:{fact}") if task.kind == "parcel_hub" else fact
        assert fact and r["kind"] == task.kind
        assert r["correct"] == (r["ok"] and fact.lower() in (r["answer"] or "").lower()), (fact, r)


async def _a2a_task(base_url: str, text: str, token: str) -> list:
    """One task for Agent B from this host, with the official a2a-sdk client as the card says to send it."""
    async with httpx.AsyncClient(timeout=600, headers={"authorization": f"Bearer {token}"}) as http:
        card = await A2ACardResolver(http, base_url).get_agent_card()
        client = await ClientFactory(ClientConfig(httpx_client=http)).create_from_url(base_url)
        message = SendMessageRequest(message=new_text_message(text, role=Role.ROLE_USER))
        return [card, *[event async for event in client.send_message(message)]]


def test_agent_b_serves_its_card_and_completes_an_a2a_task_on_the_lab(multihop):
    """Agent B on its node: the Agent Card names the node's own address, and a streamed task sent to
    it from the controller ends completed with an answer."""
    config, _, _, _ = multihop
    agent_b = next(n["address"] for n in yaml.safe_load(config.read_text())["nodes"] if n["name"] == "agent-b")
    token = (config.parent / ".lab" / "secrets" / "api_token").read_text()
    card, *events = asyncio.run(_a2a_task(f"http://{agent_b}:8102", "Where is parcel TRK1234567890 now?", token))
    assert card.capabilities.streaming and agent_b in card.supported_interfaces[0].url, card
    states = [e.status_update.status.state for e in events if e.HasField("status_update")]
    assert states[-1] == TaskState.TASK_STATE_COMPLETED, states
    [artifact] = [e.artifact_update.artifact for e in events if e.HasField("artifact_update")]
    assert get_artifact_text(artifact).strip()


def test_flows_include_the_agents_connections_to_the_llm(multihop):
    config, run, _, _ = multihop
    llm = yaml.safe_load(config.read_text())["nodes"][2]["address"]
    handed_off = any(r["delegations"] for r in lines(run / "results.jsonl"))  # only then did Agent B call the LLM
    for agent in ("agent-a", "agent-b") if handed_off else ("agent-a",):
        probes = run / "nodes" / agent / "probes"
        opened = [c for c in lines(probes / "connect.jsonl") if c["daddr"] == llm and c["dport"] == 8000]
        assert opened and all(c["direction"] == "connect" for c in opened), agent
        # A pooled connection may outlive the probes (then `lifetime` has no record of it); every
        # one that closed while they ran carried a request and its answer.
        closed = [f for f in lines(probes / "lifetime.jsonl") if f["daddr"] == llm and f["dport"] == 8000]
        assert all(f["tx_bytes"] > 0 and f["rx_bytes"] > 0 for f in closed), agent
    accepted = lines(run / "nodes" / "llm" / "probes" / "connect.jsonl")
    assert any(c["direction"] == "accept" and c["sport"] == 8000 for c in accepted)


def captures(run: Path) -> list[Path]:
    return sorted(run.glob("nodes/*/probes/pcap-*.pcap"))


def test_the_experiment_analysed_its_run(multihop):
    _, run, _, _ = multihop
    assert (run / "report.html").is_file() and (run / "tables" / "connections.parquet").is_file()
    assert "json_schema: replies constrained to the decision schema" in (run / "report.html").read_text()
    assert_every_agentic_task_has_an_llm_flow(analysis.analyze_run(run), multihop=True)


@pytest.fixture(scope="module")
def baseline(deployed_lab, tmp_path_factory):
    config = deployed_lab.config
    path = scenario(
        tmp_path_factory.mktemp("scenarios"),
        "baseline-small",
        workload="baseline",
        tasks={"count": 8, "seed": 1},
        load={"concurrency": 1},
        warmup=1,
    )
    lab_cli(config, "experiment", str(path), timeout=600)
    return analysis.analyze_run(run_dir(config, "baseline-small"))


def test_baseline_flows_per_task_follow_each_tasks_plan_on_the_lab(baseline):
    assert len(baseline.per_task[~baseline.per_task["warmup"]]) == 8
    assert_baseline_matches_the_call_graph(baseline)


def test_probe_flows_agree_with_handshakes_in_every_nodes_capture(baseline, multihop):
    assert_flows_agree_with_handshakes(baseline, captures(baseline.run.path))
    _, run, _, _ = multihop
    assert_flows_agree_with_handshakes(analysis.analyze_run(run), captures(run))


def test_the_llm_is_timed_and_a_run_it_cannot_serve_in_time_stops_before_the_probes(deployed_lab, multihop, tmp_path):
    """Preflight times the LLM (an agent-sized prompt) against the scenario's timeouts: the run
    that fits records the speed; one whose LLM calls cannot finish stops with the numbers and
    what to change, before any probe starts and without a run directory."""
    _, run, _, _ = multihop
    speed = manifest(run)["llm_speed"]
    assert (
        speed["node"] == "llm"
        and speed["ttft_s"] > 0
        and speed["tokens_per_s"] > 0
        and speed["max_tokens"] == LLM_MAX_TOKENS
    )
    config = deployed_lab.config
    path = scenario(
        tmp_path,
        "simple-hurried",
        workload="simple",
        tasks={"count": 1, "seed": 1},
        timeouts={"llm_s": 0.2, "tool_s": 20, "agent_s": 120},
    )

    def node_runs() -> str:
        return lab_cli(config, "ssh", "agent-b", "--", "sudo", "ls", "-A", "/var/lib/lab/runs").stdout

    before, on_node = set((config.parent / "runs").iterdir()), node_runs()
    result = lab_cli(config, "experiment", str(path), check=False, timeout=300)
    out = " ".join((result.stdout + result.stderr).split())
    assert result.returncode == 1 and "Traceback" not in out, out
    assert "preflight: the LLM on llm" in out and "timeouts.llm_s" in out and "nspawn provider" in out, out
    assert set((config.parent / "runs").iterdir()) == before and node_runs() == on_node  # no probe runner started


def test_a_probe_killed_mid_run_is_recorded_and_the_rest_is_kept(deployed_lab, tmp_path):
    config = deployed_lab.config
    path = scenario(
        tmp_path,
        "baseline-kill",
        workload="baseline",
        tasks={"count": 60, "seed": 2},
        load={"rate_per_s": 4},
        task_timeout_s=30,
        probes=["lifetime", "state", "connect", "rtt", "retrans", "pcap"],  # `state` opted in
    )
    experiment = start_experiment(config, path)
    status = wait_running(config, "agent-b")
    victim = status["probes"]["rtt"]["pid"]  # the node's one bpftrace, which every bpftrace probe shares
    lab_cli(config, "ssh", "agent-b", "--", "sudo", "kill", "-9", str(victim))
    output, _ = experiment.communicate(timeout=300)
    assert experiment.returncode == 0, output
    run = run_dir(config, "baseline-kill")
    m = manifest(run)
    probes = m["probes"]["agent-b"]
    for probe in ("lifetime", "state", "connect", "rtt", "retrans"):
        assert probes[probe]["state"] == "exited" and "SIGKILL" in probes[probe]["error"], probe
        assert any(f["node"] == "agent-b" and f["what"].startswith(f"probe {probe} exited") for f in m["faults"])
    assert "probe rtt exited" in output
    for node in ("agent-a", "llm"):
        assert all(p["state"] == "stopped" for p in m["probes"][node].values())
    captures = [p for name, p in probes.items() if name.startswith("pcap:")]  # tcpdump, a process of its own
    assert captures and all(p["state"] == "stopped" and p["records"] > 0 for p in captures)
    assert_files_intact(run, m["files"])
    assert m["tasks"] == {"planned": 60, "total": 60, "ok": 60, "failed": 0, "warmup": 0}


def test_ctrl_c_stops_the_probes_and_pulls_what_exists(deployed_lab, tmp_path):
    config = deployed_lab.config
    path = scenario(
        tmp_path,
        "baseline-interrupted",
        workload="baseline",
        tasks={"count": 400, "seed": 3},
        load={"rate_per_s": 5},
        task_timeout_s=30,
    )
    experiment = start_experiment(config, path)
    wait_running(config, "llm")
    time.sleep(8)
    experiment.send_signal(signal.SIGINT)
    output, _ = experiment.communicate(timeout=300)
    assert experiment.returncode == 130, output
    run = run_dir(config, "baseline-interrupted")
    m = manifest(run)
    assert any(f["node"] == "controller" and f["what"].startswith("interrupted (Ctrl-C)") for f in m["faults"])
    done = lines(run / "results.jsonl")
    assert 0 < len(done) == m["tasks"]["total"] < 400
    for node in NODES:
        assert json.loads((run / "nodes" / node / "probes" / "status.json").read_text())["state"] == "stopped"
    assert_files_intact(run, m["files"])


def test_runners_left_by_a_killed_controller_are_stopped_by_the_next_run(deployed_lab, tmp_path):
    config = deployed_lab.config
    orphaned = scenario(
        tmp_path,
        "baseline-orphaned",
        workload="baseline",
        tasks={"count": 400, "seed": 5},
        load={"rate_per_s": 5},
        task_timeout_s=30,
    )
    experiment = start_experiment(config, orphaned)
    left = wait_running(config, "agent-b")["pid"]
    experiment.kill()  # SIGKILL: no chance to stop the probes
    experiment.communicate(timeout=60)
    path = scenario(tmp_path, "baseline-after", workload="baseline", tasks={"count": 3, "seed": 5})
    lab_cli(config, "experiment", str(path), timeout=300)
    m = manifest(run_dir(config, "baseline-after"))
    stale = {f["node"]: f["what"] for f in m["faults"] if "left running by an earlier run" in f["what"]}
    assert set(stale) == set(NODES), m["faults"]
    assert f"pid {left}" in stale["agent-b"] and "baseline-orphaned" in stale["agent-b"]
    assert lab_cli(config, "ssh", "agent-b", "--", "sudo", "kill", "-0", str(left), check=False).returncode != 0
    assert m["tasks"]["ok"] == 3
    killed = analysis.analyze_run(run_dir(config, "baseline-orphaned"))  # no node data: reported, not a crash
    assert (
        any(p.where.startswith("nodes/") for p in killed.run.problems) and (killed.run.path / "report.html").is_file()
    )


def test_an_impairment_is_applied_recorded_and_removed(deployed_lab, tmp_path):
    config = deployed_lab.config
    path = scenario(
        tmp_path,
        "baseline-impaired",
        workload="baseline",
        tasks={"count": 10, "seed": 4},
        load={"concurrency": 2},
        impairments=[{"node": "agent-b", "to": "llm", "delay_ms": 5, "rate_mbit": 50}],
    )
    lab_cli(config, "experiment", str(path), timeout=300)
    m = manifest(run_dir(config, "baseline-impaired"))
    [applied] = m["impairments_applied"]
    assert applied["node"] == "agent-b" and applied["to"] == "llm" and applied["iface"] == "host0"
    assert applied["applied_by"]["rate_mbit"] == "htb" and "htb" in applied["qdisc"]
    netem = applied["applied_by"]["delay_ms"] == "netem"
    assert applied["not_applied"] == ([] if netem else ["delay_ms"])
    qdisc = lab_cli(config, "ssh", "agent-b", "--", "sudo", "tc", "qdisc", "show", "dev", "host0").stdout
    assert "htb" not in qdisc and "netem" not in qdisc


@pytest.fixture(scope="module")
def by_session_policy(deployed_lab, tmp_path_factory):
    """The same simple run with mcp_session per_call and persistent, analysed."""
    config = deployed_lab.config
    results = {}
    for policy in ("per_call", "persistent"):
        name = f"simple-{policy.replace('_', '-')}"
        path = scenario(
            tmp_path_factory.mktemp("scenarios"),
            name,
            workload="simple",
            tasks={"count": 3, "seed": 1},
            warmup=1,
            knobs={"mcp_session": policy},
            timeouts=ROOMY,
        )
        lab_cli(config, "experiment", str(path), timeout=900)
        results[policy] = analysis.analyze_run(run_dir(config, name))
    return results


def test_a_persistent_mcp_session_opens_fewer_connections_per_task(by_session_policy):
    """The knob is in the manifest and the report, and the analysis shows what it changes: per
    call (langchain-mcp-adapters' default) opens a session, and a connection, for every tool call."""
    per_call, persistent = by_session_policy["per_call"], by_session_policy["persistent"]
    for policy, result in by_session_policy.items():
        assert result.run.manifest.scenario.config["knobs"]["mcp_session"] == policy
        assert f"mcp_session={policy}" in (result.run.path / "report.html").read_text()
        assert result.per_task.loc[~result.per_task["warmup"], "ok"].all()
    assert persistent.summary["new_flows_per_task"] < per_call.summary["new_flows_per_task"], (
        persistent.summary["new_flows_per_task"],
        per_call.summary["new_flows_per_task"],
    )


def test_pooled_llm_connections_carry_several_calls(by_session_policy):
    """With pooling (the default) and the CPU LLM's keep-alive front, an agent's LLM connection
    carries more than one call, as it would against vLLM."""
    hops = by_session_policy["per_call"].hops.set_index("hop")
    assert hops.loc["agent→llm", "calls_per_conn"] > 1, hops
