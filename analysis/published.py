"""The lab's flows measured the way published studies of AI traffic measured theirs, so a
reader sees where the lab agrees with them or differs. Every figure counts the lab connections
of the measured tasks (the headline's set); the sources are listed in ../shared/RESEARCH.md:

- Cisco, "AI Impact on Wide Area Networks" (2026), live service-provider traffic: 9 % of AI
  flows carry more bytes upstream than downstream vs 0.5 % of web flows; AI inference flows
  last ~2x longer than web transactions; web's median flow rate is ~10x that of AI flows.
- Ding, Zhu and Liu, "Network and Systems Performance Characterization of MCP-Enabled LLM
  Agents", arXiv 2511.07426 (2025): MCP traffic's completion:prompt token ratio is 2-30x lower
  than general LLM traffic's, prompts carrying tool schemas and history. The lab has bytes, not
  tokens: its LLM hop's response:request byte ratio is the nearest measure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from analysis.pipeline import RunAnalysis

# figure key -> (label, format, what the published study found)
FIGURES: dict[str, tuple[str, str, str]] = {
    "upstream_heavy_share": (
        "flows with more bytes upstream (client to server) than downstream",
        "{:.1%}",
        "AI 9 %, web 0.5 % (Cisco 2026)",
    ),
    "flow_duration_ms_p50": ("flow duration, median (ms)", "{:.1f}", "AI ~2x web (Cisco 2026)"),
    "flow_rate_bps_p50": (
        "flow rate, median (bytes/s, payload over lifetime)",
        "{:,.0f}",
        "web ~10x AI (Cisco 2026)",
    ),
    "llm_resp_req_ratio": (
        "LLM hop: response bytes over request bytes",
        "{:.2f}",
        "MCP completion:prompt tokens 2-30x lower than general LLM traffic (arXiv 2511.07426)",
    ),
}
# figures compared as a ratio of the agentic run to the baseline run, and what the study's ratio is
RATIOS: dict[str, str] = {
    "flow_duration_ms_p50": "AI over web: ~2 (Cisco 2026)",
    "flow_rate_bps_p50": "AI over web: ~0.1 (Cisco 2026)",
}


def directions(flows: pd.DataFrame, conn_ids: pd.Series) -> pd.DataFrame:
    """Per connection, the payload bytes upstream (from the side that connected) and downstream, from
    the first of its ends whose direction and byte counts the probes saw."""
    ends = flows[flows["conn_id"].isin(conn_ids) & flows["tx_bytes"].notna() & flows["direction"].notna()]
    client = ends["direction"] == "connect"
    sized = pd.DataFrame(
        {
            "conn_id": ends["conn_id"],
            "up": np.where(client, ends["tx_bytes"], ends["rx_bytes"]),
            "down": np.where(client, ends["rx_bytes"], ends["tx_bytes"]),
        }
    )
    return sized.drop_duplicates("conn_id").set_index("conn_id")


def figures(result: RunAnalysis) -> dict[str, float]:
    """The FIGURES of one run."""
    measured = result.per_task.loc[~result.per_task["warmup"], "trace_id"]
    conns = result.joined.conns
    mine = conns[conns["lab"] & conns["trace_id"].isin(measured)]
    sized = directions(result.joined.flows, mine["conn_id"])
    lasting = mine[(mine["lifetime_ns"] > 0) & mine["bytes"].notna()]
    calls = result.joined.calls
    llm = calls[(calls["kind"] == "llm") & calls["trace_id"].isin(measured)]
    request = llm["req_bytes"].sum()
    return {
        "upstream_heavy_share": float((sized["up"] > sized["down"]).mean()) if len(sized) else np.nan,
        "flow_duration_ms_p50": float(mine["lifetime_ns"].median() / 1e6) if len(mine) else np.nan,
        "flow_rate_bps_p50": float((lasting["bytes"] / (lasting["lifetime_ns"] / 1e9)).median())
        if len(lasting)
        else np.nan,
        "llm_resp_req_ratio": float(llm["resp_bytes"].sum() / request) if request > 0 else np.nan,
    }


def table(groups: dict[str, list[RunAnalysis]], baselines: dict[str, str]) -> pd.DataFrame:
    """One column per group of runs (a run, or a sweep cell's repetitions: each figure's mean over them)
    and the published value; each agentic group named in `baselines` also gets its ratio to that
    baseline group."""
    measured = {label: pd.DataFrame([figures(r) for r in runs]).mean().to_dict() for label, runs in groups.items()}
    frame = pd.DataFrame(
        {label: {FIGURES[k][0]: _fmt(v, FIGURES[k][1]) for k, v in found.items()} for label, found in measured.items()}
    )
    frame["published"] = [FIGURES[k][2] for k in FIGURES]
    for label, base_label in baselines.items():
        for key, published in RATIOS.items():
            base = measured[base_label][key]
            ratio = measured[label][key] / base if base else np.nan
            frame.loc[f"{FIGURES[key][0]}: {label} over {base_label}", [label, "published"]] = [
                _fmt(ratio, "{:.2f}"),
                published,
            ]
    frame.index.name = "figure"
    return frame.fillna("")


def against_baseline(results: list[RunAnalysis]) -> dict[str, str]:
    """Each agentic run's label -> the first baseline run's label (none without a baseline run)."""
    baseline = next((r for r in results if r.run.workload == "baseline"), None)
    return {r.label: baseline.label for r in results if baseline is not None and r is not baseline}


def _fmt(value: float, pattern: str) -> str:
    return "–" if value is None or np.isnan(value) else pattern.format(value)
