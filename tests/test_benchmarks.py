"""Every benchmark script still starts: `--help` imports all it uses and parses its arguments, so an
interface the benchmarks use that moved (as workload.driver's Scenario did) fails here, not on a GPU host."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if p.name != "benchlab.py")  # benchlab: their helpers


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_the_benchmark_starts_and_explains_its_arguments(script):
    shown = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert shown.stdout.startswith("usage: "), shown.stdout[:500]
