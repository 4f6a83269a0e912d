"""What deploy copies to the LLM node for vLLM: a Hugging Face model directory on the controller.

    python ansible/model_manifest.py DIR --cache .lab/model-hashes.json

Prints one JSON object the llm_model role reads: `name` (the directory's name), `files` (each
regular file's path relative to DIR, size and sha256), `bytes` (their sum) and `digest` (one hash
over the list, which the node keeps beside its copy to know it is complete). Checksums are cached
by path, size and modification time, so a multi-gigabyte model is read once, not on every deploy.
Hidden files (.cache/, .gitattributes, huggingface-cli's download metadata) are not part of the model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from workload.llm import sha256_of  # noqa: E402  (the project's root, as wheelhouse.py reaches it)


class ManifestError(RuntimeError):
    """The directory cannot be described; the message says why."""


def model_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise ManifestError(f"{directory} is not a directory on the controller")
    files = sorted(
        p
        for p in directory.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    )
    if not files:
        raise ManifestError(f"{directory} holds no files")
    return files


def sha256(path: Path, cache: dict[str, Any]) -> str:
    stat = path.stat()
    key = str(path.resolve())
    known = cache.get(key)
    if known and known["size"] == stat.st_size and known["mtime_ns"] == stat.st_mtime_ns:
        return known["sha256"]
    digest = sha256_of(path)
    cache[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    return digest


def manifest(directory: Path, cache_path: Path) -> dict[str, Any]:
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    files = [
        {"path": str(p.relative_to(directory)), "size": p.stat().st_size, "sha256": sha256(p, cache)}
        for p in model_files(directory)
    ]
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_text(json.dumps(cache, indent=1))
    listing = json.dumps(files, sort_keys=True).encode()
    return {
        "name": directory.name,
        "files": files,
        "bytes": sum(f["size"] for f in files),
        "digest": hashlib.sha256(listing).hexdigest(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--cache", type=Path, required=True, help="where checksums are kept between deploys")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(manifest(args.directory.resolve(), args.cache)))
    except ManifestError as exc:
        print(f"llm.model: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
