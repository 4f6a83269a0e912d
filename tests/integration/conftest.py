"""A deployed lab shared by the integration tests that need running services: three nspawn
nodes brought up by `lab up` and configured by deploy.yml, once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab import state
from lab.config import load_config
from lab.state import LabState
from tests.conftest import REPO, lab_cli, write_lab

NAME = "tx"
PREFIX = "10.83.0"
DEPLOY_TIMEOUT_S = 3600  # the first deploy builds the wheelhouse from PyPI


BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class DeployedLab:
    config: Path
    state: LabState
    first_deploy: subprocess.CompletedProcess[str]
    """The first `ansible-playbook deploy.yml` on the fresh nodes (test_deploy reads its recap)."""


def with_group_vars(inventory: Path) -> Path:
    """An inventory directory outside the repository sees the checked-in group_vars."""
    group_vars = inventory / "group_vars"
    if not group_vars.exists():
        group_vars.symlink_to(REPO / "inventory" / "group_vars")
    return inventory


def playbook(config: Path, *args: str, inventory: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`ansible-playbook deploy.yml` from the repository root against this lab's generated inventory."""
    inventory = with_group_vars(inventory or config.parent / "inventory")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "deploy.yml", "-i", str(inventory), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEPLOY_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="session")
def deployed_lab(tmp_path_factory, node_image) -> Iterator[DeployedLab]:
    """A lab that is up and deployed, shared by every test that needs running services; torn down after the session."""
    config = write_lab(tmp_path_factory.mktemp("deployed"), NAME, PREFIX, provider="nspawn")
    try:
        lab_cli(config, "up")
        first = playbook(config)
        if first.returncode != 0:
            raise AssertionError(
                f"deploy.yml exited {first.returncode}:\n{first.stdout[-6000:]}\n{first.stderr[-3000:]}"
            )
        yield DeployedLab(config, state.require(load_config(config)), first)
    finally:
        lab_cli(config, "teardown", check=False)
