"""Make real run directories without the lab: the whole workload on the loopback of one
network namespace (run this script inside it), the collectors runner observing that
namespace as node `agent-b`, the driver submitting tasks, and the output laid out as the
experiment controller lays out a run (manifest.json, results.jsonl, telemetry, nodes/).

    ip netns exec NS python tests/analysis/loopback_run.py OUT [--scenarios baseline,simple,multihop]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from experiments.drive import Outcome, Planned
from experiments.manifest import checksums, probe_summary
from lab import runlayout
from workload import driver
from workload.db import seed_database
from workload.llm import FAST_MODEL
from workload.local import LocalPostgres, LocalStack
from workload.tasks import make_tasks

NODE = "agent-b"
NODE_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
SYNTH = {"response_bytes": 4096, "latency_ms": 10, "fanout": 2}
TASKS = {"baseline": (6, 2), "simple": (2, 1), "multihop": (2, 1)}  # tasks, concurrency
# tcpdump (without --immediate-mode) hands packets over in blocks, about once a second; a
# SIGTERM sooner after the traffic loses them, so let the last block come out first.
DRAIN_S = 2.0


def start_probes(run_id: str, out: Path) -> subprocess.Popen:
    argv = [
        NODE_PYTHON,
        "-m",
        "collectors",
        "run",
        "--node",
        NODE,
        "--run-id",
        run_id,
        "--out",
        str(out),
        "--netns-inode",
        "auto",
        "--iface",
        "lo",
    ]
    proc = subprocess.Popen(
        argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if json.loads((out / runlayout.STATUS).read_text()).get("state") == "running":
                return proc
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(
                f"collectors runner exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
        time.sleep(0.2)
    raise TimeoutError("probes did not attach in 90 s")


def stop_probes(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def telemetry_sizes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in directory.glob("*.jsonl")}


def copy_new_telemetry(directory: Path, before: dict[str, int], dest: Path) -> None:
    """This run's events only: what each service appended since the run started."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in directory.glob("*.jsonl"):
        with open(path, "rb") as f:
            f.seek(before.get(path.name, 0))
            (dest / path.name).write_bytes(f.read())


def run_scenario(stack: LocalStack, out: Path, scenario: str, seed: int) -> Path:
    count, concurrency = TASKS[scenario]
    run_id = f"loop-{scenario}-{time.strftime('%Y%m%dT%H%M%S')}"
    run_dir = out / run_id
    probes = runlayout.probes_dir(run_dir, NODE)
    started = time.time_ns()
    runner = start_probes(run_id, probes)
    before = telemetry_sizes(stack.telemetry_dir)
    try:
        tasks = make_tasks(seed, count)
        results = driver.run(
            scenario,
            tasks,
            stack.entry,
            concurrency,  # type: ignore[arg-type]
            telemetry_dir=runlayout.telemetry_dir(run_dir),
        )
        time.sleep(DRAIN_S)
    finally:
        stop_probes(runner)
    copy_new_telemetry(stack.telemetry_dir, before, runlayout.telemetry_dir(runlayout.node_dir(run_dir, NODE)))
    with open(runlayout.results_path(run_dir), "w") as f:
        outcomes = [Outcome(Planned(task, 1, None), result) for task, result in zip(tasks, results, strict=True)]
        f.writelines(json.dumps(outcome.record()) + "\n" for outcome in outcomes)
    status = json.loads(runlayout.status_file(run_dir, NODE).read_text())
    ok = sum(r.ok for r in results)
    manifest = runlayout.Manifest(
        run_id=run_id,
        scenario=runlayout.ScenarioRecord(
            name=scenario, config={"tasks": count, "concurrency": concurrency, "synth": SYNTH}
        ),
        lab={"name": "loopback", "llm": {"backend": "llamacpp", "model": FAST_MODEL}},
        provider="loopback",
        accelerator="container",
        image="host",
        versions=runlayout.Versions(controller={"python": platform.python_version(), "kernel": platform.release()}),
        started_at_ns=started,
        ended_at_ns=time.time_ns(),
        clock_offsets={
            NODE: {
                "start": runlayout.ClockOffset(offset_ns=0, uncertainty_ns=0),
                "end": runlayout.ClockOffset(offset_ns=0, uncertainty_ns=0),
            }
        },
        probes={NODE: probe_summary(status)},
        tasks=runlayout.Tasks(planned=count, total=len(results), ok=ok, failed=len(results) - ok),
        files=checksums(run_dir),
    )
    runlayout.write_manifest(manifest, run_dir)
    return run_dir


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--scenarios", default="baseline,simple,multihop")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    work = Path(tempfile.mkdtemp(prefix="analysis-loop-"))
    work.chmod(0o755)
    pg = LocalPostgres(work / "pg")
    seed_database(pg.start(), args.seed)
    stack = LocalStack(work / "stack", pg.dsn, synth=SYNTH)
    stack.directory.mkdir()
    try:
        if set(scenarios) - {"baseline"}:
            stack.start_llm(FAST_MODEL, backend="cpu")  # llama.cpp, whatever the host has
        stack.start()
        for scenario in scenarios:
            print(run_scenario(stack, args.out, scenario, args.seed), flush=True)
    finally:
        stack.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
