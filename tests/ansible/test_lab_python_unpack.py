"""roles/lab_python's unpack of a wheelhouse bundle, run by ansible-playbook on this machine
(connection local): an unpack that was cut short is done again, a complete one is left alone."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from tests.conftest import REPO, require_root

BIN = Path(sys.executable).parent
NAME = "services-0123456789ab-cdef01234567"
MEMBERS = {
    "requirements.txt": b"alpha==1.0\nbeta==2.0\n",
    "alpha-1.0-py3-none-any.whl": b"wheel a",
    "beta-2.0-py3-none-any.whl": b"wheel b",
}


def unpack(tmp_path: Path) -> tuple[str, int]:
    """Run the role's unpack tasks for the bundle NAME; (output, changed count)."""
    playbook = tmp_path / "unpack.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "localhost",
                    "connection": "local",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Unpack",
                            "ansible.builtin.import_role": {"name": "lab_python", "tasks_from": "unpack"},
                        }
                    ],
                }
            ]
        )
    )
    extra = {
        "ansible_python_interpreter": sys.executable,
        "lab_wheelhouse_dir": str(tmp_path / "node"),
        "lab_python_profile": "services",
        "wheelhouse_manifest": {"profiles": {"services": {"archive": str(tmp_path / f"{NAME}.tar"), "name": NAME}}},
    }
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
