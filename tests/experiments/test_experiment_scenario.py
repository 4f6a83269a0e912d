"""Scenario files: the shipped ones load, every kind of bad input gets one error naming the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from experiments.scenario import ALL, SCENARIO_DIR, load_scenario, named
from lab.config import LabConfig, load_config
from lab.errors import ConfigError
from tests.conftest import REPO, write_lab

LAB = load_config(REPO / "lab.yaml")
VALID = {"workload": "multihop", "tasks": {"count": 3, "seed": 2}}


def problem(tmp_path: Path, **changes) -> str:
    data = {**VALID, **changes}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}))
    with pytest.raises(ConfigError) as info:
        load_scenario(str(path), LAB)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message


def with_workers(tmp_path: Path) -> LabConfig:
    """The three nodes of every lab and one in group workers."""
    path = write_lab(tmp_path, "wk", "10.98.0")
    data = yaml.safe_load(path.read_text())
    data["nodes"].append({"name": "worker-1", "groups": ["workers"], "address": "10.98.0.21"})
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


@pytest.mark.parametrize("name", ALL)
def test_the_shipped_scenarios_load(name, tmp_path):
    scenario, path = load_scenario(name, with_workers(tmp_path))
    assert scenario.name == name == scenario.workload
    assert path == SCENARIO_DIR / f"{name}.yaml"
    assert scenario.load.mode == "closed" and scenario.tasks.count >= 20


def test_fanout_needs_nodes_in_group_workers_and_all_runs_what_the_lab_can(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_scenario("fanout", LAB)
    assert str(info.value) == (
        f"{SCENARIO_DIR / 'fanout.yaml'}: workload: fanout runs services on nodes in group workers, and lab.yaml "
        "has none; add nodes with groups: [workers] to it, then `lab up` and `lab deploy`"
    )
    assert named("all", LAB) == ["baseline", "simple", "multihop"]
    assert named("all", with_workers(tmp_path)) == ["baseline", "simple", "multihop", "fanout"]
    assert named("fanout", LAB) == ["fanout"]  # named alone: refused by load_scenario, as above


def test_defaults_and_a_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(VALID))
    scenario, _ = load_scenario(str(path), LAB)
    assert scenario.name == "mine" and scenario.load.concurrency == 1 and scenario.warmup == 0
    assert scenario.repetitions == 1 and scenario.impairments == []
    assert scenario.probes == ["lifetime", "connect", "rtt", "retrans", "pcap"]  # state is opt-in


def test_unknown_scenario_names_the_choices():
    with pytest.raises(ConfigError, match="no scenario 'nope'; use one of baseline, fanout, multihop, simple, 'all'"):
        load_scenario("nope", LAB)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_scenario(str(tmp_path / "absent.yaml"), LAB)


def test_a_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(yaml.safe_dump(VALID).encode() + "# d\u00e9bit\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_scenario(str(path), LAB)
    assert str(info.value) == f"{path}: line 5: not UTF-8 text (byte 0xe9); save the file as UTF-8"


def test_unknown_key_lists_the_allowed_ones(tmp_path):
    message = problem(tmp_path, concurency=2)
    assert "unknown key 'concurency'" in message and "allowed: name, workload, tasks, load" in message


def test_missing_workload(tmp_path):
    assert "workload: required but missing; add it" in problem(tmp_path, workload=None)


def test_bad_workload(tmp_path):
    message = problem(tmp_path, workload="agentic")
    assert (
        "workload: no workload 'agentic' in workload/topologies/; use one of baseline, simple, multihop, fanout"
        in message
    )


def test_task_count_must_be_positive(tmp_path):
    assert "tasks.count: Input should be greater than or equal to 1" in problem(tmp_path, tasks={"count": 0})


def test_load_needs_exactly_one_mode(tmp_path):
    both = problem(tmp_path, load={"concurrency": 2, "rate_per_s": 1.0})
    assert "load: give exactly one of concurrency (closed loop) or rate_per_s (open loop)" in both
    assert "give exactly one" in problem(tmp_path, load={})


def test_open_loop(tmp_path):
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump({**VALID, "load": {"rate_per_s": 0.5}}))
    scenario, _ = load_scenario(str(path), LAB)
    assert scenario.load.mode == "open" and scenario.load.rate_per_s == 0.5


def test_unknown_probe(tmp_path):
    assert "probes[1]: Input should be 'lifetime'" in problem(tmp_path, probes=["rtt", "tcplife"])


def test_impairment_needs_an_effect(tmp_path):
    message = problem(tmp_path, impairments=[{"node": "agent-a"}])
    assert "impairments[0]: an impairment needs at least one of delay_ms, loss_pct, rate_mbit" in message


def test_impairment_jitter_needs_delay(tmp_path):
    assert "jitter_ms needs delay_ms" in problem(
        tmp_path, impairments=[{"node": "agent-a", "jitter_ms": 3, "loss_pct": 1}]
    )


def test_impairment_loss_is_a_percentage(tmp_path):
    assert "impairments[0].loss_pct: Input should be less than or equal to 100" in problem(
        tmp_path, impairments=[{"node": "agent-a", "loss_pct": 150}]
    )


def test_impairment_to_itself(tmp_path):
    assert "'to' names the node itself (llm)" in problem(
        tmp_path, impairments=[{"node": "llm", "to": "llm", "delay_ms": 5}]
    )


@pytest.mark.parametrize(
    ("fault", "said"),
    [
        ({"kind": "link_down", "node": "agent-b", "at_s": 3}, "inject[0]: link_down needs for_s (seconds it lasts)"),
        ({"kind": "stop_node", "node": "llm", "at_s": 3, "for_s": 2}, "inject[0]: stop_node takes no for_s"),
        ({"kind": "kill_service", "node": "llm", "at_s": 3}, "inject[0]: kill_service needs service"),
        (
            {"kind": "kill_service", "node": "llm", "at_s": 3, "service": "lm"},
            "inject[0]: no lab service 'lm'; use one of llm, tool-db",
        ),
        ({"kind": "reboot", "node": "llm", "at_s": 3}, "inject[0].kind: Input should be 'kill_service'"),
        ({"kind": "stop_node", "node": "llm", "at_s": -1}, "inject[0].at_s: Input should be greater than or equal"),
        ({"kind": "stop_node", "node": "agent-c", "at_s": 1}, "inject[0].node: no node 'agent-c' in lab.yaml"),
    ],
)
def test_a_bad_injection_names_its_entry_and_the_fix(tmp_path, fault, said):
    assert said in problem(tmp_path, inject=[fault])


def test_impairment_unknown_node_names_the_lab_nodes(tmp_path):
    message = problem(tmp_path, impairments=[{"node": "agent-a", "to": "agent-c", "delay_ms": 5}])
    assert "impairments[0].to: no node 'agent-c' in lab.yaml; use one of agent-a, agent-b, llm" in message


def test_overlapping_links(tmp_path):
    twice = [{"node": "agent-a", "to": "llm", "delay_ms": 5}, {"node": "agent-a", "to": "llm", "loss_pct": 1}]
    assert "impairments[1]: link agent-a -> llm overlaps an earlier entry" in problem(tmp_path, impairments=twice)
    mixed = [{"node": "agent-a", "to": "llm", "delay_ms": 5}, {"node": "agent-a", "rate_mbit": 10}]
    assert "impairments[1]: link agent-a -> all overlaps" in problem(tmp_path, impairments=mixed)


def test_per_peer_links_on_one_node(tmp_path):
    path = tmp_path / "links.yaml"
    links = [{"node": "agent-a", "to": "llm", "delay_ms": 5}, {"node": "agent-a", "to": "agent-b", "rate_mbit": 10}]
    path.write_text(yaml.safe_dump({**VALID, "impairments": links}))
    scenario, _ = load_scenario(str(path), LAB)
    assert [i.to for i in scenario.impairments] == ["llm", "agent-b"]


def test_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- workload\n")
    with pytest.raises(ConfigError, match="expected a mapping of keys"):
        load_scenario(str(path), LAB)


def test_a_bad_knob_value_names_the_knob_and_its_values(tmp_path):
    message = problem(tmp_path, knobs={"mcp_server": "stateful_json"})
    assert "knobs.mcp_server: Input should be 'stateless_json' or 'stateful_sse' (got 'stateful_json')" in message


def test_knobs_default_to_what_the_widely_used_client_and_server_do(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**VALID, "knobs": {"mcp_session": "per_task"}}))
    scenario, _ = load_scenario(str(path), LAB)
    assert scenario.knobs.mcp_session == "per_task" and scenario.knobs.mcp_server == "stateful_sse"
