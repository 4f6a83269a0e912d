"""A run directory as the controller wrote it: the manifest, the files it lists (checked
against their sizes and checksums), and every problem found on the way, so the report
can say what was missing instead of failing."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import runlayout
from lab.errors import ManifestError, ManifestMissingError
from lab.runlayout import LlmSpeed, Manifest

CONTROLLER = "controller"


@dataclass(frozen=True)
class Problem:
    """Something missing or wrong in the input; the analysis went on without it."""

    where: str
    what: str


@dataclass
class RunDir:
    path: Path
    manifest: Manifest = field(default_factory=Manifest)
    problems: list[Problem] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.manifest.run_id or self.path.name

    @property
    def scenario(self) -> str:
        return (self.manifest.scenario.name if self.manifest.scenario else None) or "unknown"

    @property
    def config(self) -> dict[str, Any]:
        """The scenario as run, {} where the manifest does not hold it."""
        return self.manifest.scenario.config if self.manifest.scenario else {}

    @property
    def workload(self) -> str:
        """What ran (baseline, simple, multihop): the scenario's `workload`, else its name (older runs)."""
        return str(self.config.get("workload") or self.scenario)

    def note(self, where: Path | str, what: str) -> None:
        self.problems.append(Problem(str(where), what))

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.path)) if path.is_relative_to(self.path) else str(path)

    def nodes(self) -> list[str]:
        """Nodes with a directory, plus nodes the manifest names (their absence is noted later)."""
        on_disk = {p.name for p in runlayout.nodes_dir(self.path).glob("*") if p.is_dir()}
        return sorted(on_disk | set(self.manifest.probes))


def open_run(path: Path, verify: bool = True) -> RunDir:
    """Read the manifest (a missing or broken one, or an older layout's, is noted, not an error) and,
    with `verify`, check every file it lists (sizes and checksums: every capture read once)."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a run directory")
    run = RunDir(path)
    try:
        read = runlayout.read_manifest(path)
    except ManifestMissingError:
        run.note(runlayout.MANIFEST, "missing: facts, clock offsets and checksums unknown")
    except ManifestError as exc:
        run.note(runlayout.MANIFEST, f"unreadable ({exc}): facts, clock offsets and checksums unknown")
    else:
        run.manifest = read.manifest
        for note in read.notes:
            run.note(runlayout.MANIFEST, note)
    if verify:
        check_files(run)
    return run


def check_files(run: RunDir) -> None:
    for relpath, expected in sorted(run.manifest.files.items()):
        path = run.path / relpath
        if not path.is_file():
            run.note(relpath, "missing (listed in the manifest)")
            continue
        size = path.stat().st_size
        if expected.bytes is not None and size != expected.bytes:
            run.note(relpath, f"size {size} B, the manifest says {expected.bytes} B (truncated or changed)")
        elif expected.sha256 is not None and _sha256(path) != expected.sha256:
            run.note(relpath, "sha256 differs from the manifest (changed after the run)")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def facts(run: RunDir) -> dict[str, str]:
    """What a reader must know to trust the numbers: where and with what it was measured."""
    m = run.manifest
    llm = _dict(m.lab.get("llm"))
    served = m.versions.llm
    config = run.config
    return {
        "run": run.run_id,
        "scenario": run.scenario,
        "provider": m.provider or "unknown",
        "accelerator": m.accelerator or "unknown",
        "model": _model(served, llm),
        "llm backend": str(_dict(served).get("backend") or llm.get("backend") or "unknown"),
        "image": _short(m.image),
        "placement": _placement(m.placement),
        "versions": "in the versions table",
        "git": _short(m.git.commit),
        "impairments": impairments(m) or "none",
        "faults injected": "; ".join(f"{i.node}: {i.text()}" for i in m.injected) or "none",
        "knobs": _short(config.get("knobs")) if config.get("knobs") else "not recorded (run before knobs existed)",
        "decisions": _decisions(run),
        "timeouts": _timeouts(config),
        "offloads": {"off": "GSO/TSO/GRO off on the lab interfaces: wire-sized packets"}.get(
            str(config.get("offload")), "as the provider set them (see Validation: captured segments may be coalesced)"
        ),
        "LLM speed (preflight)": _speed(m.llm_speed),
    }


def _placement(placement: dict[str, str]) -> str:
    """Which node ran which of the run's services ("agent-a: agent-a, baseline-gateway; agent-b: ...")."""
    if not placement:
        return "not recorded (run before placement was recorded)"
    nodes = sorted(set(placement.values()))
    return "; ".join(f"{node}: {', '.join(sorted(s for s, n in placement.items() if n == node))}" for node in nodes)


def _decisions(run: RunDir) -> str:
    """How the agents' model stated its decisions (the tool_calling knob); runs from before the knob
    used JSON-schema decisions."""
    if run.workload == "baseline":
        return "no LLM (baseline)"
    mode = _dict(run.config.get("knobs")).get("tool_calling")
    return {
        "native": "native: OpenAI tool calls parsed by the LLM server",
        "json_schema": "json_schema: replies constrained to the decision schema",
    }.get(str(mode), "json_schema (recorded before the tool_calling knob existed)")


def impairments(m: Manifest) -> str:
    """The impairments applied, as the manifest holds them ("" for none)."""
    return str([i.model_dump(mode="json") for i in m.impairments_applied]) if m.impairments_applied else ""


def versions(run: RunDir) -> dict[str, str]:
    """The manifest's versions, flattened to a few rows: the controller's, the nodes' (one value where
    every node has the same, else per node) and each library the nodes' workload imports."""
    found = run.manifest.versions
    controller, nodes = found.controller, found.nodes
    rows = {f"controller {k}": str(controller[k]) for k in ("python", "kernel") if k in controller}
    rows["controller packages"] = ", ".join(f"{k} {v}" for k, v in _dict(controller.get("packages")).items())
    for key in ("kernel", "python", "bpftrace", "tcpdump", "workload"):
        rows[f"nodes: {key}"] = _across({n: _dict(v).get(key) for n, v in nodes.items()})
    libraries = sorted({lib for v in nodes.values() for lib in _dict(_dict(v).get("libraries"))})
    for lib in libraries:
        rows[f"library {lib}"] = _across({n: _dict(_dict(v).get("libraries")).get(lib) for n, v in nodes.items()})
    llm = found.llm or {}
    if llm:
        rows["LLM server"] = f"{llm.get('backend', 'unknown')} on {llm.get('node', 'unknown')}"
    return {k: v for k, v in rows.items() if v}


def _across(by_node: dict[str, Any]) -> str:
    """One value where every node that has it agrees, else `node: value` per node."""
    present = {node: str(value) for node, value in by_node.items() if value}
    if len(set(present.values())) <= 1:
        return next(iter(present.values()), "")
    return "; ".join(f"{node}: {value}" for node, value in sorted(present.items()))


def _timeouts(config: dict) -> str:
    if not isinstance(config.get("timeouts"), dict):
        return "not recorded"
    return ", ".join(
        f"{k}={v:g}"
        for k, v in {**config["timeouts"], "task_timeout_s": config.get("task_timeout_s")}.items()
        if isinstance(v, (int, float))
    )


def _speed(speed: LlmSpeed | None) -> str:
    """The LLM's speed as the preflight measured it (agentic runs only)."""
    if speed is None:
        return "not measured"
    return (
        f"{speed.ttft_s} s to first token, {speed.tokens_per_s} tokens/s "
        f"({speed.prompt_chars}-character prompt, on {speed.node})"
    )


def _dict(value: Any) -> dict:
    """A manifest field that should be a mapping, or {} when it is missing or malformed."""
    return value if isinstance(value, dict) else {}


def _model(served: Any, configured: dict) -> str:
    """What really answered: the backend the LLM node ran (from the run's versions) decides which
    configured model applies; the server's own description (parameters, quantisation) is added."""
    if not isinstance(served, dict):
        return str(configured.get("model") or "unknown")
    name = configured.get("cpu_model") if served.get("backend") == "llamacpp" else configured.get("model")
    meta = (served.get("served") or {}).get("meta") or {}
    details = []
    if meta.get("n_params"):
        details.append(f"{meta['n_params'] / 1e9:.2f} B parameters")
    if meta.get("ftype"):
        details.append(str(meta["ftype"]))
    return f"{name or served.get('model') or 'unknown'}" + (f" ({', '.join(details)})" if details else "")


def _short(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)
