"""ansible/model_manifest.py, run as the llm_model role runs it: what a model directory holds,
each file's sha256 read once and then taken from the cache, and one line naming llm.model when
there is nothing to copy."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, hf_model_dir

SCRIPT = REPO / "ansible" / "model_manifest.py"


def describe(directory: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(directory), "--cache", str(cache)], capture_output=True, text=True
    )


def test_the_manifest_lists_the_models_files_and_hashes_each_once(tmp_path):
    model = hf_model_dir(tmp_path / "qwen")
    (model / "shards").mkdir()
    (model / "shards" / "b.safetensors").write_bytes(b"b" * 10)
    (model / ".cache" / "huggingface").mkdir(parents=True)
    (model / ".cache" / "huggingface" / "model.safetensors.metadata").write_text("etag")
    cache = tmp_path / "hashes.json"
    first = json.loads(describe(model, cache).stdout)
    files = {f["path"]: f for f in first["files"]}
    assert sorted(files) == [
        "config.json",
        "model.safetensors",
        "shards/b.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    weights = model / "model.safetensors"
    assert files["model.safetensors"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert first["bytes"] == sum(f["size"] for f in first["files"]) and first["name"] == "qwen"
    # same size and mtime: the cached checksum stands, the file is not read again
    stat = weights.stat()
    weights.write_bytes(os.urandom(stat.st_size))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert json.loads(describe(model, cache).stdout) == first
    # a new modification time: read again, and the digest over the listing changes
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    second = json.loads(describe(model, cache).stdout)
    assert second["digest"] != first["digest"]


def test_nothing_to_copy_is_one_line_naming_the_field(tmp_path):
    (tmp_path / "empty").mkdir()
    result = describe(tmp_path / "empty", tmp_path / "hashes.json")
    assert result.returncode == 1 and result.stderr == f"llm.model: {tmp_path / 'empty'} holds no files\n"
    result = describe(tmp_path / "missing", tmp_path / "hashes.json")
    assert result.returncode == 1 and "is not a directory on the controller" in result.stderr
