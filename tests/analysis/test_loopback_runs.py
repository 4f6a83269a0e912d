"""The analysis on real runs: the workload on loopback observed by the real probes (see
conftest.py), three scenarios, then a damaged copy of one run."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

import analysis
from analysis import plots
from analysis.pipeline import RunAnalysis
from analysis.sweep import Cell, write_sweep_report
from tests.analysis.checks import (
    assert_baseline_matches_the_call_graph,
    assert_every_agentic_task_has_an_llm_flow,
    assert_flows_agree_with_handshakes,
    hops_per_task,
)
from tests.analysis.layout import layout_problems, rendered, text_overlaps

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]


@pytest.fixture(scope="module")
def analysed(loop_runs: dict[str, Path]) -> dict[str, RunAnalysis]:
    return {scenario: analysis.analyze_run(path) for scenario, path in loop_runs.items()}


def test_baseline_flows_per_task_follow_each_tasks_plan(analysed: dict[str, RunAnalysis]) -> None:
    result = analysed["baseline"]
    assert len(result.per_task) == 6
    assert_baseline_matches_the_call_graph(result)
    assert result.summary["correct_share"] == 1.0  # the baseline states the dataset's facts


@pytest.mark.parametrize("scenario", ["baseline", "simple", "multihop"])
def test_probe_flow_count_agrees_with_handshakes_in_the_capture(
    analysed: dict[str, RunAnalysis], scenario: str
) -> None:
    result = analysed[scenario]
    assert_flows_agree_with_handshakes(result, [result.run.path / "nodes" / "agent-b" / "probes" / "pcap-lo.pcap"])


@pytest.mark.parametrize("scenario", ["simple", "multihop"])
def test_every_agentic_task_has_an_llm_flow(analysed: dict[str, RunAnalysis], scenario: str) -> None:
    assert len(hops_per_task(analysed[scenario])) == 2
    assert_every_agentic_task_has_an_llm_flow(analysed[scenario], multihop=scenario == "multihop")


@pytest.mark.parametrize("scenario", ["baseline", "simple", "multihop"])
def test_lab_traffic_is_joined_to_calls(analysed: dict[str, RunAnalysis], scenario: str) -> None:
    result = analysed[scenario]
    conns, flows = result.joined.conns, result.joined.flows
    unmatched = flows[flows["conn_id"].isin(conns.loc[conns["call_id"].isna(), "conn_id"])]
    assert result.summary["matched_lab_flows"] >= 0.99, (conns["label"].value_counts(), unmatched.to_string())
    assert result.summary["matched_packets"] >= 0.95
    tcp_calls = result.joined.calls[result.joined.calls["kind"] != "task"]
    matched = tcp_calls["call_id"].isin(result.joined.used["call_id"])
    assert matched.mean() >= 0.99, tcp_calls.loc[~matched, ["client_service", "kind", "peer", "op"]]
    assert not result.run.problems, result.run.problems
    assert result.summary["rtt_us_p50"] > 0 and result.summary["packets_per_task"] > 0
    assert result.summary["rtt_us_max"] >= result.summary["rtt_us_p99.9"]  # every segment's srtt, not only window ends


def test_run_outputs_are_written_and_the_report_is_self_contained(analysed: dict[str, RunAnalysis]) -> None:
    path = analysed["multihop"].run.path
    for table in ("tasks", "calls", "connections", "packets", "rtt", "hops", "timescales"):
        assert len(pd.read_parquet(path / "tables" / f"{table}.parquet")) > 0, table
    summary = json.loads((path / "analysis.json").read_text())
    assert summary["scenario"] == "multihop" and summary["problems"] == []
    page = (path / "report.html").read_text()
    assert "loopback" in page and "container" in page and "Headline metrics" in page
    assert "<h2>Left out of the headline</h2>" in page and "bootstrap interval" in page
    assert "<h2>Agent loop, accuracy and traffic</h2>" in page and "<h3>Traffic by answer</h3>" in page
    assert (
        len(re.findall(r'<img [^>]*src="data:image/png;base64,', page))
        == len(list((path / "plots").glob("*.png")))
        == 9
    )
    burstiness = pd.read_parquet(path / "tables" / "burstiness.parquet").set_index("group")
    assert "link agent-b/lo" in burstiness.index and "lab (each packet once)" in burstiness.index
    assert burstiness["hurst"].notna().any()
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_comparison_report_puts_the_scenarios_side_by_side(loop_runs: dict[str, Path], tmp_path: Path) -> None:
    runs = [loop_runs[s] for s in ("baseline", "simple", "multihop")]
    page = analysis.compare(runs, tmp_path).read_text()
    assert "baseline vs simple vs multihop" in page
    assert "different set-ups" not in page
    assert "bootstrap interval" in page and "<h2>Agentic vs baseline</h2>" in page and "yes: no clear" in page
    assert "Beside published figures" in page and "simple over baseline" in page and "Cisco 2026" in page
    assert "<h2>Validation</h2>" in page and "handshakes joined to a probe connection" in page
    manifest = json.loads((runs[0] / "manifest.json").read_text())
    (runs[0] / "manifest.json").write_text(json.dumps({**manifest, "provider": "libvirt", "accelerator": "kvm"}))
    try:
        assert "different set-ups" in analysis.compare(runs, tmp_path / "mixed").read_text()
    finally:
        (runs[0] / "manifest.json").write_text(json.dumps(manifest))


def test_reports_render_without_overlaps_or_sideways_scrolling(loop_runs: dict[str, Path], tmp_path: Path) -> None:
    results = [analysis.analyze_run(loop_runs[s]) for s in ("baseline", "simple", "multihop")]
    comparison = analysis.compare_results(results, tmp_path / "comparison")
    for page in (comparison, results[2].run.path / "report.html"):
        assert layout_problems(rendered(page, tmp_path)) == [], page
    for stem, fig, _ in [*plots.comparison_plots(results), *plots.run_plots(results[2])]:
        assert text_overlaps(fig) == [], stem
        plt.close(fig)
    assert [r.label for r in results] == ["baseline", "simple", "multihop"]  # short labels; the facts give run ids


def test_a_sweep_report_gives_intervals_and_the_effect_against_the_baseline(
    loop_runs: dict[str, Path], tmp_path: Path
) -> None:
    repeated = [shutil.copytree(loop_runs["baseline"], tmp_path / f"baseline-r{i}") for i in (1, 2)]
    cells = [
        Cell("c1", {"workload": "baseline", "load.concurrency": 1}, repeated),
        Cell("c2", {"workload": "multihop", "load.concurrency": 1}, [loop_runs["multihop"]]),
        Cell("c3", {"workload": "simple", "load.concurrency": 2}, [loop_runs["simple"]]),  # no baseline at 2
    ]
    page = write_sweep_report(cells, tmp_path / "sweep").read_text()
    assert "The grid" in page and "Agentic vs baseline at the same setting" in page
    assert "Beside published figures" in page and "c2 over c1" in page and "<h2>Validation</h2>" in page
    summary = json.loads((tmp_path / "sweep" / "sweep-summary.json").read_text())
    by_cell = {c["label"]: c for c in summary["cells"]}
    assert by_cell["c1"]["unit"] == "repetitions" and by_cell["c1"]["metrics"]["flows_per_task"]["n"] == 2
    assert by_cell["c2"]["unit"] == "tasks" and by_cell["c2"]["workload"] == "multihop"
    assert {e["agentic cell"] for e in summary["effects"]} == {"c2"}
    flows = next(e for e in summary["effects"] if e["metric"] == "flows_per_task")
    assert flows["difference"]["mean"] > 0 and flows["ratio"]["mean"] > 1
    assert len(list((tmp_path / "sweep" / "plots").glob("*_ccdf.png"))) == 3


def test_a_damaged_run_is_analysed_as_far_as_the_data_allows(loop_runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "damaged"
    shutil.copytree(loop_runs["simple"], run)
    probes = run / "nodes" / "agent-b" / "probes"
    (probes / "pcap-lo.pcap").unlink()
    rtt = (probes / "rtt.jsonl").read_bytes()
    (probes / "rtt.jsonl").write_bytes(rtt[: len(rtt) // 2])  # cut mid-line
    (run / "nodes" / "agent-b" / "telemetry" / "tool-db.jsonl").write_text("{broken\n")
    result = subprocess.run(
        [sys.executable, "-m", "lab", "analyze", str(run)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    problems = {p["where"]: p["what"] for p in json.loads((run / "analysis.json").read_text())["problems"]}
    assert problems["nodes/agent-b/probes/pcap-lo.pcap"].startswith("missing")
    assert "truncated" in problems["nodes/agent-b/probes/rtt.jsonl"]
    assert "unreadable" in problems["nodes/agent-b/telemetry/tool-db.jsonl"]
    page = (run / "report.html").read_text()
    assert "analysed as far as the data allows" in page and "pcap-lo.pcap" in page


def test_a_probe_the_run_did_not_select_is_not_a_problem(loop_runs: dict[str, Path], tmp_path: Path) -> None:
    """`state` is opt-in (a scenario's `probes`): a run without it has no state.jsonl, and its
    status.json and manifest do not list it; that is not missing data."""
    run = tmp_path / "no-state"
    shutil.copytree(loop_runs["baseline"], run)
    probes = run / "nodes" / "agent-b" / "probes"
    (probes / "state.jsonl").unlink()
    status = json.loads((probes / "status.json").read_text())
    del status["probes"]["state"]
    (probes / "status.json").write_text(json.dumps(status))
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["probes"]["agent-b"]["state"]
    del manifest["files"]["nodes/agent-b/probes/state.jsonl"]
    manifest["files"]["nodes/agent-b/probes/status.json"]["sha256"] = hashlib.sha256(
        (probes / "status.json").read_bytes()
    ).hexdigest()
    manifest["files"]["nodes/agent-b/probes/status.json"]["bytes"] = (probes / "status.json").stat().st_size
    (run / "manifest.json").write_text(json.dumps(manifest))
    result = analysis.analyze_run(run)
    assert [p for p in result.run.problems if "state" in p.where] == []
    assert result.run.problems == [] and len(result.per_task) == 6


def test_probe_values_out_of_range_or_of_the_wrong_type_are_listed_and_the_rest_analysed(
    loop_runs: dict[str, Path], tmp_path: Path
) -> None:
    """What a Debian 6.1 guest's lifetime probe wrote before the FIN flag came from the socket
    (rx_bytes 2^64 - 1, which ended the analysis in OverflowError), beside a string where a
    number belongs and a record missing its port: each becomes null, listed by field."""
    run = tmp_path / "odd-values"
    shutil.copytree(loop_runs["baseline"], run)
    path = run / "nodes" / "agent-b" / "probes" / "lifetime.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["rx_bytes"] = 18446744073709551615
    records[1]["tx_bytes"] = "12"
    del records[2]["sport"]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = subprocess.run(
        [sys.executable, "-m", "lab", "analyze", str(run)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    problems = [
        p["what"]
        for p in json.loads((run / "analysis.json").read_text())["problems"]
        if p["where"] == "nodes/agent-b/probes/lifetime.jsonl" and "value(s)" in p["what"]
    ]
    assert sorted(problems) == [
        "rx_bytes: 1 value(s) out of range or of the wrong type, read as null",
        "tx_bytes: 1 value(s) out of range or of the wrong type, read as null",
    ]
    assert len(pd.read_parquet(run / "tables" / "flows.parquet")) > 0
    assert "rx_bytes: 1 value(s)" in (run / "report.html").read_text()
