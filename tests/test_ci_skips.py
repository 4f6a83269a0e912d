"""A test this machine cannot run is skipped here and fails in CI (CI=true), where a skip would
hide that it never ran: tests/conftest.py's cannot_run, run by a real pytest in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

TEST = """from tests.conftest import cannot_run


def test_needs_something_absent():
    cannot_run("this test", "no such device here")
"""


@pytest.mark.parametrize(("ci", "outcome"), [(None, "1 skipped"), ("true", "1 failed")])
def test_a_test_that_cannot_run_is_skipped_here_and_fails_in_ci(tmp_path, ci, outcome):
    (tmp_path / "test_absent.py").write_text(TEST)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": str(REPO)} | ({"CI": ci} if ci else {})
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rfs", "-p", "no:cacheprovider", "test_absent.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert outcome in result.stdout, result.stdout
    assert ("this test cannot run in CI: no such device here" in result.stdout) == (ci == "true")


SLOW_FIXTURE = """import time

import pytest


@pytest.fixture
def deployed():
    time.sleep(3)  # a lab brought up and deployed: bounded by its own commands' timeouts


@pytest.mark.timeout(2)
def test_quick_once_deployed(deployed):
    pass
"""


def test_the_per_test_timeout_leaves_the_slow_set_up_of_a_lab_out(tmp_path):
    # run with this project's pytest settings (rootdir and pyproject.toml of the repository)
    test = tmp_path / "test_slow_fixture.py"
    test.write_text(SLOW_FIXTURE)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(REPO),
            "-c",
            str(REPO / "pyproject.toml"),
            str(test),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "1 passed" in result.stdout, result.stdout
