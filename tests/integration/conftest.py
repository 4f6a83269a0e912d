"""A deployed lab shared by the integration tests that need running services: three nspawn
nodes brought up by `lab up` and configured by deploy.yml, once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import state
from lab.config import load_config
from lab.state import LabState
from tests.conftest import REPO, lab_cli, write_lab

NAME = "tx"
PREFIX = "10.83.0"
DEPLOY_TIMEOUT_S = 3600  # the first deploy builds the wheelhouse from PyPI


def deploy(config: Path) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook deploy.yml` from the repository against this lab's generated inventory."""
    group_vars = config.parent / "inventory" / "group_vars"
    if not group_vars.exists():
        group_vars.symlink_to(REPO / "inventory" / "group_vars")
    playbook = Path(sys.executable).parent / "ansible-playbook"
    result = subprocess.run([str(playbook), "deploy.yml", "-i", str(config.parent / "inventory")], cwd=REPO,
                            capture_output=True, text=True, timeout=DEPLOY_TIMEOUT_S, check=False, env={**os.environ, "ANSIBLE_NOCOLOR": "1"})
    if result.returncode != 0:
        raise AssertionError(f"deploy.yml exited {result.returncode}:\n{result.stdout[-6000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def deployed_lab(tmp_path_factory, node_image) -> Iterator[tuple[Path, LabState]]:
    """(lab.yaml path, LabState) of a lab that is up and deployed; torn down after the session."""
    config = write_lab(tmp_path_factory.mktemp("deployed"), NAME, PREFIX, provider="nspawn")
    try:
        lab_cli(config, "up")
        deploy(config)
        yield config, state.require(load_config(config))
    finally:
        lab_cli(config, "teardown", check=False)
