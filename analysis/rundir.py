"""A run directory as the controller wrote it: the manifest, the files it lists (checked
against their sizes and checksums), and every problem found on the way, so the report
can say what was missing instead of failing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONTROLLER = "controller"


@dataclass(frozen=True)
class Problem:
    """Something missing or wrong in the input; the analysis went on without it."""

    where: str
    what: str


@dataclass
class RunDir:
    path: Path
    manifest: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id") or self.path.name)

    @property
    def scenario(self) -> str:
        scenario = self.manifest.get("scenario")
        name = scenario.get("name") if isinstance(scenario, dict) else scenario
        return str(name or "unknown")

    @property
    def workload(self) -> str:
        """What ran (baseline, simple, multihop): the scenario's `workload`, else its name (older runs)."""
        config = _dict(_dict(self.manifest.get("scenario")).get("config"))
        return str(config.get("workload") or self.scenario)

    def note(self, where: Path | str, what: str) -> None:
        self.problems.append(Problem(str(where), what))

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.path)) if path.is_relative_to(self.path) else str(path)

    def nodes(self) -> list[str]:
        """Nodes with a directory, plus nodes the manifest names (their absence is noted later)."""
        on_disk = {p.name for p in (self.path / "nodes").glob("*") if p.is_dir()}
        return sorted(on_disk | set(self.manifest.get("probes") or {}))


def open_run(path: Path) -> RunDir:
    """Read the manifest (a missing or broken one is a problem, not an error) and check every file it lists."""
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a run directory")
    run = RunDir(path, {})
    manifest = path / "manifest.json"
    try:
        run.manifest = json.loads(manifest.read_text())
    except FileNotFoundError:
        run.note("manifest.json", "missing: facts, clock offsets and checksums unknown")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        run.note("manifest.json", f"unreadable ({exc}): facts, clock offsets and checksums unknown")
    if not isinstance(run.manifest, dict):
        run.note("manifest.json", "not a JSON object")
        run.manifest = {}
    check_files(run)
    return run


def check_files(run: RunDir) -> None:
    files = run.manifest.get("files") or {}
    for relpath, expected in sorted(files.items()):
        path = run.path / relpath
        if not path.is_file():
            run.note(relpath, "missing (listed in the manifest)")
            continue
        size = path.stat().st_size
        if "bytes" in expected and size != expected["bytes"]:
            run.note(relpath, f"size {size} B, the manifest says {expected['bytes']} B (truncated or changed)")
        elif "sha256" in expected and _sha256(path) != expected["sha256"]:
            run.note(relpath, "sha256 differs from the manifest (changed after the run)")


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def facts(run: RunDir) -> dict[str, str]:
    """What a reader must know to trust the numbers: where and with what it was measured."""
    m = run.manifest
    llm = _dict(_dict(m.get("lab")).get("llm"))
    versions = m.get("versions") or {}
    served = _dict(versions).get("llm")
    git = m.get("git")
    config = _dict(_dict(m.get("scenario")).get("config"))
    return {
        "run": run.run_id,
        "scenario": run.scenario,
        "provider": str(m.get("provider", "unknown")),
        "accelerator": str(m.get("accelerator", "unknown")),
        "model": _model(served, llm),
        "llm backend": str(_dict(served).get("backend") or llm.get("backend") or "unknown"),
        "image": _short(m.get("image")),
        "versions": ", ".join(f"{k} {v}" for k, v in versions.items())
        if isinstance(versions, dict)
        else _short(versions),
        "git": _short(git.get("commit") if isinstance(git, dict) else git),
        "impairments": _short(m.get("impairments_applied")) if m.get("impairments_applied") else "none",
        "knobs": _short(_dict(config).get("knobs"))
        if _dict(config).get("knobs")
        else "not recorded (run before knobs existed)",
        "timeouts": _timeouts(config),
        "offloads": {"off": "GSO/TSO/GRO off on the lab interfaces: wire-sized packets"}.get(
            str(config.get("offload")), "as the provider set them (see Validation: captured segments may be coalesced)"
        ),
        "LLM speed (preflight)": _speed(m.get("llm_speed")),
    }


def _timeouts(config: dict) -> str:
    if not isinstance(config.get("timeouts"), dict):
        return "not recorded"
    return ", ".join(
        f"{k}={v:g}"
        for k, v in {**config["timeouts"], "task_timeout_s": config.get("task_timeout_s")}.items()
        if isinstance(v, (int, float))
    )


def _speed(speed: Any) -> str:
    """The LLM's speed as the preflight measured it (agentic runs only)."""
    if not isinstance(speed, dict):
        return "not measured"
    return (
        f"{speed.get('ttft_s')} s to first token, {speed.get('tokens_per_s')} tokens/s "
        f"({speed.get('prompt_chars')}-character prompt, on {speed.get('node')})"
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
