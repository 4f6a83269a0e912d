"""One real workload on loopback per test session: PostgreSQL, the CPU LLM server, both
MCP tool servers, the baseline chain and both agents, each its own process."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from workload import driver
from workload.db import seed_database
from workload.llm import FAST_MODEL
from workload.local import LocalPostgres, LocalStack, read_served_events
from workload.tasks import Task, make_tasks

SEED = 7
SYNTH = {"response_bytes": 4096, "latency_ms": 10, "fanout": 2}


@pytest.fixture(scope="session")
def seed() -> int:
    return SEED


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    # under /tmp itself, not pytest's 0700 tree, so the PostgreSQL user can reach its directory
    path = Path(tempfile.mkdtemp(prefix="workload-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres(workdir: Path) -> Iterator[LocalPostgres]:
    pg = LocalPostgres(workdir / "pg")
    seed_database(pg.start(), SEED)
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
def stack(workdir: Path, postgres: LocalPostgres) -> Iterator[LocalStack]:
    services = LocalStack(workdir / "stack", postgres.dsn, synth=SYNTH)
    services.directory.mkdir(parents=True)
    try:
        services.start_llm(FAST_MODEL, backend="cpu")  # llama.cpp, whatever the host has: a GPU host would start vLLM
        services.start()
        yield services
    finally:
        services.stop()


@pytest.fixture(scope="session")
def tasks() -> list[Task]:
    return make_tasks(SEED, 6)


@pytest.fixture(scope="session")
def runs(stack: LocalStack, tasks: list[Task]) -> dict[str, list[driver.TaskResult]]:
    """Every scenario run once: all six tasks through the baseline, three through each agentic one."""
    return {
        "baseline": driver.run("baseline", tasks, stack.entry, concurrency=2, telemetry_dir=stack.telemetry_dir),
        "simple": driver.run("simple", tasks[:3], stack.entry, concurrency=1, telemetry_dir=stack.telemetry_dir),
        "multihop": driver.run("multihop", tasks[:3], stack.entry, concurrency=2, telemetry_dir=stack.telemetry_dir),
    }


@pytest.fixture(scope="session")
def events(stack: LocalStack, runs: dict[str, list[driver.TaskResult]]) -> list[dict]:
    """Every service's events, once each task's entry service logged its side of the root call."""
    return read_served_events(stack.telemetry_dir, (r.call_id for results in runs.values() for r in results))
