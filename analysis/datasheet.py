"""The datasheet of an export, after Gebru et al., "Datasheets for Datasets": one dict
(datasheet.json) and the same as Markdown (DATASHEET.md). Units and descriptions of the columns
come from analysis/schema.py, dtypes and row counts from the tables written, the run facts
from each run's manifest."""

from __future__ import annotations

import importlib.metadata
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from analysis import schema
from analysis.rundir import facts
from lab import runlayout

if TYPE_CHECKING:
    from analysis.export import Exported

REFERENCE = (
    "Timnit Gebru, Jamie Morgenstern, Briana Vecchione, Jennifer Wortman Vaughan, Hanna Wallach, "
    "Hal Daumé III, Kate Crawford. Datasheets for Datasets. Communications of the ACM 64(12):86-92, 2021. "
    "https://doi.org/10.1145/3458723 (arXiv:1803.09010)"
)
UNDESCRIBED = "not described in analysis/schema.py"
MOTIVATION = (
    "Made to answer one question: how does the traffic of LLM agents calling tools differ, at L3/L4, from the "
    "traffic of a plain microservice chain? Each run is one scenario (baseline chain, single agent, agent hand-off "
    "...) on a three-node lab (agents, MCP tool servers, an LLM server) with eBPF probes and packet captures on "
    "every node; the analysis joins every connection, packet, RTT window and retransmission to the task and call "
    "that caused it."
)
GENERAL_LIMITATIONS = [
    "Captures keep headers only (tcpdump -s 96): no payload content is in the dataset; payload sizes come from "
    "the IP and TCP headers. `tasks.answer` holds the agents' answers to the scenario's synthetic tasks.",
    "`tasks.ok` means the driver got an answer without an error, not that the answer was correct.",
    "RTT is the kernel's smoothed RTT (srtt) at the last segment of each rtt-probe window (at most 100 ms of "
    "received segments, a capped number of windows per second per node), not one sample per segment; "
    "srtt_min_us and srtt_max_us bound the srtt within the window.",
    "With segmentation offload (GSO/TSO/GRO) on, a captured packet can be larger than the MTU: packet counts are "
    "segments as the kernel handed them to the capture, not necessarily frames on a wire.",
    "Ids described as run-local (key, endpoint codes, conn_id) are numbered per run: join tables on (run_id, id).",
    "Every connection the probes saw is kept, SSH, controller traffic and connections opened before the run "
    "included: `connections.label` and `hop` = unmatched mark them; per-task and per-hop metrics count the "
    "matched traffic of measured tasks only (warm-up tasks are flagged in `tasks.warmup` and excluded).",
    "Container (nspawn) nodes share the host's kernel and CPUs, and VM nodes under TCG are emulated: the timing "
    "is this host's, not a production network's (each run's provider and accelerator are listed).",
    "Node times are brought to the controller's clock with the measured offsets: each is uncertain by about the "
    "offset's uncertainty (listed per run).",
    "Left out: raw probe JSONL, packet captures, logs, plots and reports, and the telemetry JSONL itself (its "
    "events are the calls table, and every one of them a span of otlp/<run_id>.json). They stay in the run "
    "directories, whose manifests (runs/<run_id>/manifest.json) list every file with its sha256.",
    "The OTLP traces (otlp/<run_id>.json) are the lab's telemetry renamed after the OpenTelemetry GenAI, MCP and A2A "
    "semantic conventions (Development status, so names may still change upstream), not the output of an "
    "OpenTelemetry SDK: an llm call is one `chat` span per request without message content, an MCP session's "
    "server side is one span per HTTP request, and times are the controller's clock like the tables'.",
]
USES = (
    "Comparing agentic and non-agentic traffic at L3/L4 (flows per task, fan-out, RTT, retransmissions, "
    "burstiness, latency breakdown) between scenarios, loads, impairments and models run on this lab. Not suited "
    "to claims about production networks' absolute timing or about the quality of the models' answers."
)
TRACES = (
    "each run's telemetry as one OTLP/JSON trace document (ExportTraceServiceRequest; open it in a trace viewer "
    "such as Jaeger): one span per telemetry event, CLIENT and SERVER sides, one tree per task under the "
    "driver's task call; names and attributes after the OpenTelemetry GenAI, MCP and A2A semantic conventions "
    "(`chat {model}` with token usage, `execute_tool {tool}` with gen_ai.tool.call.id, `invoke_agent {agent}`), "
    "the lab's own fields (ids, bytes, the 5-tuples) as lab.* attributes (analysis/otlp.py)"
)
MAINTENANCE = (
    "Regenerate with `lab export RUN|SWEEP... DIR` from the run directories; the column descriptions live in "
    "analysis/schema.py, which the tests hold to the tables the analysis writes. Verify the files with "
    "`sha256sum -c SHA256SUMS` in this directory."
)


def build(exported: list[Exported], tables: dict[str, pa.Table]) -> dict[str, Any]:
    runs = [_run(item) for item in exported]
    sheet_tables = {name: _table(name, table, [run["run_id"] for run in runs]) for name, table in tables.items()}
    undescribed = [
        f"{name}.{c['name']}" for name, t in sheet_tables.items() for c in t["columns"] if c["unit"] == "unknown"
    ]
    return {
        "title": "Agentic traffic lab dataset",
        "model": REFERENCE,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "exported_by": {
            "package": "agentic-lab",
            "version": importlib.metadata.version("agentic-lab"),
            "git": runlayout.Git.of(Path(__file__).resolve().parents[1]).model_dump(),
        },
        "motivation": MOTIVATION,
        "files": {
            runlayout.table_relpath("<table>"): "every run's rows of that table, with a run_id column",
            runlayout.exported_manifest_relpath("<run_id>"): "each run's manifest as the controller wrote it",
            runlayout.exported_traces_relpath("<run_id>"): TRACES,
            "DATASHEET.md, datasheet.json": "this datasheet, as Markdown and as JSON",
            "SHA256SUMS": "sha256 of every other file (sha256sum -c SHA256SUMS)",
        },
        "units": schema.UNITS,
        "tables": sheet_tables,
        "runs": runs,
        "preprocessing": (
            "Each run analysed by the lab's analysis package (analysis/README.md): node clocks brought to the "
            "controller's, connections assembled from the probes' ends, calls from both sides' telemetry, calls "
            "matched to connections by 4-tuple and time (±10 ms), packets, RTT windows and retransmissions "
            "attributed to calls and tasks, a packet captured on two nodes kept once. The OTLP traces: every "
            "telemetry event a span, named after the OpenTelemetry GenAI semantic conventions, parented to "
            "the span that made its call (analysis/otlp.py)."
        ),
        "limitations": {
            "general": GENERAL_LIMITATIONS,
            "undescribed_columns": undescribed,
            "runs": {run["run_id"]: _run_limitations(run) for run in runs},
        },
        "uses": USES,
        "distribution": "Under the lab repository's licence (Apache-2.0) unless its owner says otherwise.",
        "maintenance": MAINTENANCE,
    }


def _table(name: str, table: pa.Table, run_ids: list[str]) -> dict[str, Any]:
    spec = schema.TABLES[name]
    counts = {c["values"]: c["counts"] for c in pc.value_counts(table["run_id"]).to_pylist()}
    return {
        "file": runlayout.table_relpath(name),
        "row": spec.row,
        "source": spec.source,
        "rows": table.num_rows,
        "rows_per_run": {run_id: counts.get(run_id, 0) for run_id in run_ids},
        "columns": [_column(spec, field) for field in table.schema],
    }


def _column(spec: schema.Table, field: pa.Field) -> dict[str, str]:
    known = schema.RUN_ID if field.name == "run_id" else spec.columns.get(field.name)
    unit, description = (known.unit, known.description) if known else ("unknown", UNDESCRIBED)
    return {"name": field.name, "dtype": str(field.type), "unit": unit, "description": description}


def _run(item: Exported) -> dict[str, Any]:
    m = item.run.manifest.model_dump(mode="json")
    return {
        "run_id": item.run.run_id,
        "layout_version": m["layout_version"],
        "scenario": item.run.scenario,
        "manifest": runlayout.exported_manifest_relpath(item.run.run_id),
        "facts": {k: v for k, v in facts(item.run).items() if k != "versions"},  # in full below
        "started_at_ns": m["started_at_ns"],
        "ended_at_ns": m["ended_at_ns"],
        "scenario_config": m["scenario"]["config"] if m["scenario"] else None,
        "lab": m["lab"],
        "versions": m["versions"],
        "git": m["git"],
        "impairments_applied": m["impairments_applied"],
        "clock_offsets": m["clock_offsets"],
        "probes": {
            node: {name: {k: p[k] for k in ("state", "source", "records", "lost")} for name, p in by_probe.items()}
            for node, by_probe in m["probes"].items()
        },
        "tasks": m["tasks"],
        "faults": m["faults"],
        "analysis_problems": item.problems,
        "reanalysed_for_export": item.reanalysed,
        "traces": {"file": runlayout.exported_traces_relpath(item.run.run_id), **item.traces},
    }


def _run_limitations(run: dict[str, Any]) -> list[str]:
    lines = [f"{p.get('where')}: {p.get('what')}" for p in run["analysis_problems"]]
    lines += [f"fault: {_text(fault)}" for fault in run["faults"]]
    lines += [
        f"probe {name} on {node} lost {p['lost']} record(s)"
        for node, by_probe in run["probes"].items()
        for name, p in by_probe.items()
        if p.get("lost")
    ]
    return lines


# --- Markdown -------------------------------------------------------------------------------


def markdown(sheet: dict[str, Any]) -> str:
    made = sheet["exported_by"]
    git = made["git"] or {}
    parts = [
        f"# Datasheet: {sheet['title']}",
        f"Written after *Datasheets for Datasets*: {sheet['model']}.",
        f"Created {sheet['created_at']} by {made['package']} {made['version']} "
        f"(git {_text(git.get('commit'))}{', uncommitted changes' if git.get('dirty') else ''}): "
        f"{len(sheet['runs'])} run(s), "
        f"{len(sheet['tables'])} tables. The same as JSON: `datasheet.json`.",
        "## Motivation",
        sheet["motivation"],
        "## Composition",
        _rows(["file", "holds"], list(sheet["files"].items())),
        "### Units",
        _rows(["unit", "meaning"], list(sheet["units"].items())),
        *[_table_md(name, table) for name, table in sheet["tables"].items()],
        "## Collection process",
        "Each run's manifest facts; the full manifests are in `runs/<run_id>/manifest.json`.",
        *[_run_md(run) for run in sheet["runs"]],
        "## Preprocessing",
        sheet["preprocessing"],
        "## Known limitations and what is left out",
        "\n".join(f"- {line}" for line in sheet["limitations"]["general"]),
        *_specific_limitations_md(sheet["limitations"]),
        "## Uses",
        sheet["uses"],
        "## Distribution",
        sheet["distribution"],
        "## Maintenance",
        sheet["maintenance"],
    ]
    return "\n\n".join(parts) + "\n"


def _table_md(name: str, table: dict[str, Any]) -> str:
    per_run = ", ".join(f"{run} {n}" for run, n in table["rows_per_run"].items()) or "none"
    columns = _rows(
        ["column", "dtype", "unit", "how it was measured"],
        [(f"`{c['name']}`", c["dtype"], c["unit"], c["description"]) for c in table["columns"]],
    )
    return (
        f"### Table `{name}` (`{table['file']}`)\n\nOne row: {table['row']}. Made from: {table['source']}.\n\n"
        f"Rows: {table['rows']} ({per_run}).\n\n{columns}"
    )


def _run_md(run: dict[str, Any]) -> str:
    offsets = [
        (node, *(_offset(when.get(side)) for side in ("start", "end")))
        for node, when in run["clock_offsets"].items()
        if isinstance(when, dict)
    ]
    probes = [
        (node, name, _text(p["state"]), _text(p["records"]), _text(p["lost"]))
        for node, by_probe in run["probes"].items()
        for name, p in by_probe.items()
    ]
    return "\n\n".join(
        [
            f"### Run `{run['run_id']}`",
            _rows(["fact", "value"], list(run["facts"].items())),
            _traces_md(run["traces"]),
            "Clock offsets (node − controller):\n\n"
            + (_rows(["node", "at start", "at end"], offsets) if offsets else "not recorded"),
            "Probes:\n\n"
            + (_rows(["node", "probe", "state", "records", "lost"], probes) if probes else "not recorded"),
            "Impairments applied:\n\n" + _json(run["impairments_applied"]),
            "Scenario config:\n\n" + _json(run["scenario_config"]),
            "Versions:\n\n" + _json(run["versions"]),
        ]
    )


def _traces_md(traces: dict[str, Any]) -> str:
    if "spans" not in traces:
        return f"Traces: `{traces['file']}`."
    orphans = f", {traces['extra_roots']} span(s) whose parent call was not logged" if traces["extra_roots"] else ""
    return f"Traces: `{traces['file']}`, {traces['spans']} spans in {traces['traces']} traces{orphans}."


def _specific_limitations_md(limitations: dict[str, Any]) -> list[str]:
    parts = []
    if limitations["undescribed_columns"]:
        parts.append(f"Columns without a description ({UNDESCRIBED}): " + ", ".join(limitations["undescribed_columns"]))
    for run_id, lines in limitations["runs"].items():
        body = "\n".join(f"- {line}" for line in lines) if lines else "- none found"
        parts.append(f"Run `{run_id}` (analysis problems, faults, probe losses):\n\n{body}")
    return parts


def _offset(measured: Any) -> str:
    if not isinstance(measured, dict) or measured.get("offset_ns") is None:
        return "not measured"
    uncertainty = measured.get("uncertainty_ns")
    spread = f" ± {uncertainty / 1e3:.1f}" if isinstance(uncertainty, (int, float)) else ""
    return f"{measured['offset_ns'] / 1e3:.1f}{spread} µs"


def _rows(header: list[str], rows: list[tuple[Any, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return _text(value).replace("|", "\\|").replace("\n", " ")


def _text(value: Any) -> str:
    return "unknown" if value is None else value if isinstance(value, str) else json.dumps(value, default=str)


def _json(value: Any) -> str:
    return "```json\n" + json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n```"
