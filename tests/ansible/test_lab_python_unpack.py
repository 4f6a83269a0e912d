"""roles/lab_python, run by ansible-playbook on this machine (connection local): an unpack of a
wheelhouse bundle that was cut short is done again, a complete one is left alone; a part of a
profile installs only what it needs, the whole profile adds the rest, and a rerun installs nothing."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, require_root

BIN = Path(sys.executable).parent
NAME = "services-0123456789ab-cdef01234567"
MEMBERS = {
    "requirements.txt": b"alpha==1.0\nbeta==2.0\n",
    "alpha-1.0-py3-none-any.whl": b"wheel a",
    "beta-2.0-py3-none-any.whl": b"wheel b",
}


def run_role(tmp_path: Path, tasks_from: str, extra: dict[str, Any]) -> tuple[str, int]:
    """Run the role's `tasks_from` tasks on this machine; (output, changed count)."""
    playbook = tmp_path / f"{tasks_from}.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Run",
                            "ansible.builtin.import_role": {"name": "lab_python", "tasks_from": tasks_from},
                        }
                    ],
                }
            ]
        )
    )
    extra = {"ansible_python_interpreter": sys.executable, "lab_wheelhouse_dir": str(tmp_path / "node"), **extra}
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_NOCOLOR": "1"}
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "localhost,", str(playbook), "-e", json.dumps(extra)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    changed = re.search(r"localhost\s+: ok=\d+\s+changed=(\d+)", result.stdout)
    assert changed is not None, result.stdout[-2000:]
    return result.stdout, int(changed.group(1))


def unpack(tmp_path: Path) -> tuple[str, int]:
    """Run the role's unpack tasks for the bundle NAME."""
    manifest = {"profiles": {"services": {"archive": str(tmp_path / f"{NAME}.tar"), "name": NAME}}}
    return run_role(tmp_path, "unpack", {"lab_python_profile": "services", "wheelhouse_manifest": manifest})


def test_an_unpack_cut_short_is_done_again_and_a_complete_one_left_alone(tmp_path):
    require_root("the role's files are owned by root", [])
    with tarfile.open(tmp_path / f"{NAME}.tar", "w") as tar:
        for name, data in MEMBERS.items():  # requirements.txt first, as wheelhouse.py writes it
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    wheels = tmp_path / "node" / NAME
    wheels.mkdir(parents=True)
    (wheels / "requirements.txt").write_bytes(MEMBERS["requirements.txt"])  # where the cut came

    output, changed = unpack(tmp_path)
    assert changed >= 2, output
    assert {p.name: p.read_bytes() for p in wheels.iterdir() if p.name in MEMBERS} == MEMBERS
    assert (wheels / ".unpacked").read_text() == f"{NAME}\n"

    output, changed = unpack(tmp_path)
    assert changed == 0, output


def wheel(directory: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel pip installs: one module and its metadata."""
    path = directory / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}.py", "")
        archive.writestr(f"{info}/METADATA", metadata)
        archive.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr(f"{info}/RECORD", "")
    return path


def test_a_part_installs_what_it_needs_and_the_whole_profile_adds_the_rest(tmp_path):
    """A tools node gets the services profile's `tools` part (alpha and what it needs, pinned by
    the bundle); an agent node on the same venv then gets the whole profile; nothing is installed twice."""
    require_root("the role's files are owned by root", [])
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    wheel(bundle, "alpha", "1.0", ("gamma",))
    wheel(bundle, "gamma", "1.0")
    wheel(bundle, "gamma", "2.0")  # newer, but the bundle pins 1.0
    wheel(bundle, "beta", "2.0", ("gamma",))
    (bundle / "requirements.txt").write_text("alpha==1.0\nbeta==2.0\ngamma==1.0\n")
    with tarfile.open(tmp_path / f"{NAME}.tar", "w") as tar:
        for member in sorted(bundle.iterdir()):
            tar.add(member, arcname=member.name)
    project = tmp_path / "project"
    project.mkdir()
    manifest = {
        "project": {"wheel": str(wheel(project, "labproject", "0.1")), "requirement": "labproject==0.1"},
        "profiles": {
            "services": {"archive": str(tmp_path / f"{NAME}.tar"), "name": NAME, "parts": {"tools": ["alpha"]}}
        },
    }
    venv = tmp_path / "venv"

    def installed() -> set[str]:
        listing = subprocess.run(
            [str(venv / "bin" / "pip"), "list", "--format", "json"], capture_output=True, text=True
        )
        packages = {f"{p['name']}=={p['version']}" for p in json.loads(listing.stdout)}
        return {p for p in packages if not p.startswith(("pip==", "setuptools=="))}

    def role(part: str) -> tuple[str, int]:
        extra = {"lab_python_venv": str(venv), "lab_python_part": part, "wheelhouse_manifest": manifest}
        return run_role(tmp_path, "main", extra)

    output, changed = role("tools")
    assert changed > 0, output
    assert installed() == {"alpha==1.0", "gamma==1.0", "labproject==0.1"}
    assert (venv / f".lab-{NAME}-tools").is_file()
    output, changed = role("tools")
    assert changed == 0, output
    output, changed = role("all")
    assert changed > 0 and (venv / f".lab-{NAME}").is_file(), output
    assert "beta==2.0" in installed()
    for part in ("all", "tools"):
        output, changed = role(part)
        assert changed == 0, output
