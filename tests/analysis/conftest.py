"""Real run directories for the analysis tests: the workload on the loopback of a fresh
network namespace, observed by the collectors runner (see loopback_run.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_root

BUILDER = Path(__file__).with_name("loopback_run.py")
PG_BIN = Path(os.environ.get("LAB_PG_BIN", "/usr/lib/postgresql/15/bin"))


@pytest.fixture(scope="session")
def loop_runs() -> Iterator[dict[str, Path]]:
    """scenario -> run directory, for baseline, simple and multihop (one workload, three runs)."""
    require_root(
        "analysis integration tests",
        ("ip", "bpftrace", "tcpdump"),
        [] if (PG_BIN / "initdb").exists() else [f"PostgreSQL in {PG_BIN}"],
    )
    out = Path(tempfile.mkdtemp(prefix="analysis-runs-"))
    out.chmod(0o755)
    ns = f"an{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        made = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, str(BUILDER), str(out)],
            capture_output=True,
            text=True,
            timeout=1200,
            check=False,
        )
        if made.returncode != 0:
            raise RuntimeError(f"making the loopback runs failed:\n{made.stdout}\n{made.stderr[-4000:]}")
        runs = [Path(line) for line in made.stdout.split()]
        yield {path.name.split("-")[1]: path for path in runs}
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(out, ignore_errors=True)
