"""The node image cache: builds running at once never share a work path, the first to finish is
the image, and what a killed build left is removed by the next one while a running build's stays."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from vms import image

# mmdebstrap needs a mirror and minutes; this stands in for it, and only for it: like mmdebstrap it
# refuses a target that is not empty and fills the root over time (here a kernel and an initrd).
FAKE_MMDEBSTRAP = """#!/usr/bin/env python3
import os, sys, time
target = sys.argv[-2]
if os.listdir(target):
    sys.exit(f"{target} is not empty")
os.mkdir(f"{target}/boot")
time.sleep(float(os.environ["FAKE_MMDEBSTRAP_SECONDS"]))
for name in ("vmlinuz-6.1.0-test", "initrd.img-6.1.0-test"):
    open(f"{target}/boot/{name}", "w").close()
"""
BUILD = (
    "from lab.config import Image; from vms import image; "
    "built, new = image.build(Image(), log=lambda _: None); print(built.root, new)"
)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LAB_CACHE in tmp_path, with the stand-in mmdebstrap first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mmdebstrap").write_text(FAKE_MMDEBSTRAP)
    (bin_dir / "mmdebstrap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_MMDEBSTRAP_SECONDS", "2")
    return tmp_path / "cache"


@pytest.fixture
def pids() -> Iterator[tuple[int, int]]:
    """(a live process, a process that has exited)."""
    live = subprocess.Popen(["sleep", "60"])
    gone = subprocess.Popen(["true"])
    gone.wait()
    yield live.pid, gone.pid
    live.kill()
    live.wait()


def test_two_builds_of_one_recipe_at_once_both_get_the_image(cache: Path):
    builds = []
    for _ in range(2):
        builds.append(
            subprocess.Popen(
                [sys.executable, "-c", BUILD], cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
        subprocess.run(["sleep", "0.5"], check=True)  # the second starts while the first builds
    results = [(b.wait(timeout=60), *b.communicate()) for b in builds]
    assert [r[0] for r in results] == [0, 0], [r[2][-2000:] for r in results]
    roots = {r[1].split()[0] for r in results}
    assert roots == {str(cache / "images" / image.recipe_hash(image.Image()) / "rootfs")}
    assert list((cache / "images").iterdir()) == [cache / "images" / image.recipe_hash(image.Image())]


def test_a_killed_builds_work_is_removed_and_a_running_ones_kept(cache: Path, pids: tuple[int, int]):
    live, gone = pids
    images = cache / "images"
    digest = image.recipe_hash(image.Image())
    running = images / f"{digest}.{live}.abc123.partial"
    killed, old = images / f"{digest}.{gone}.def456.partial", images / f"{digest}.partial"
    for work in (running, killed, old):
        (work / "rootfs").mkdir(parents=True)
    image.build(image.Image(), log=lambda _: None)
    assert sorted(images.iterdir()) == [images / digest, running]


def test_the_vm_disk_leaves_a_running_builds_work_alone(tmp_path: Path, pids: tuple[int, int]):
    live, gone = pids
    root = tmp_path / "image" / "rootfs"
    (root / "boot").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc" / "hostname").write_text("node\n")
    node_image = image.NodeImage("0" * 16, root, root / "boot" / "vmlinuz", root / "boot" / "initrd.img", ())
    running = node_image.directory / f"disk.raw.{live}.abc123.partial"
    running.write_bytes(b"another build's disk, half made")
    (node_image.directory / f"disk.raw.{gone}.def456.partial").write_bytes(b"a killed build's disk")
    disk = image.disk_image(node_image, size_gb=1)
    assert sorted(node_image.directory.iterdir()) == [disk, running, root]
    assert running.read_bytes() == b"another build's disk, half made"
    label = subprocess.run(["e2label", str(disk)], capture_output=True, text=True, check=True).stdout.strip()
    assert label == "labroot"
