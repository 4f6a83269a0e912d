"""ansible/wheelhouse.py's profile bundles, built by the real pip from a local wheel: named after
their contents (nodes key their unpacked copy on that name), built once, published whole."""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
import tarfile
import zipfile
from pathlib import Path

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("wheelhouse", REPO / "ansible" / "wheelhouse.py")
assert spec is not None and spec.loader is not None
wheelhouse = importlib.util.module_from_spec(spec)
sys.modules["wheelhouse"] = wheelhouse  # its dataclasses look their module up while it loads
spec.loader.exec_module(wheelhouse)


def tiny_wheel(directory: Path) -> Path:
    path = directory / "tiny_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("tiny_pkg/__init__.py", "")
        wheel.writestr("tiny_pkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tiny-pkg\nVersion: 1.0\n")
        wheel.writestr(
            "tiny_pkg-1.0.dist-info/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        wheel.writestr("tiny_pkg-1.0.dist-info/RECORD", "")
    return path


def test_a_bundle_is_named_after_its_contents_built_once_and_replaces_older_ones(tmp_path):
    out = tmp_path / "wheelhouse"
    out.mkdir()
    older = out / "services-000000000000-aaaaaaaaaaaa.tar"
    other_profile = out / "llm-cpu-000000000000-bbbbbbbbbbbb.tar"
    older.write_bytes(b"an older bundle")
    other_profile.write_bytes(b"another profile's bundle")
    requirements = [str(tiny_wheel(tmp_path))]

    built = wheelhouse.profile_archive("services", requirements, out)
    content_hash = hashlib.sha256(built.path.read_bytes()).hexdigest()[:12]
    assert built.built and re.fullmatch(rf"services-[0-9a-f]{{12}}-{content_hash}\.tar", built.path.name)
    with tarfile.open(built.path) as tar:
        assert tar.getnames() == ["requirements.txt", "tiny_pkg-1.0-py3-none-any.whl"]
        assert tar.extractfile("requirements.txt").read() == b"tiny-pkg==1.0\n"
    assert sorted(out.iterdir()) == sorted([built.path, other_profile])  # no work files left, the older bundle gone

    again = wheelhouse.profile_archive("services", requirements, out)
    assert (again.path, again.built) == (built.path, False)


def test_a_bundle_named_before_names_held_its_hash_is_renamed_not_rebuilt(tmp_path):
    """A wheelhouse built by an older version stays usable offline: nothing is fetched for it."""
    out = tmp_path / "wheelhouse"
    out.mkdir()
    requirements = [str(tmp_path / "absent-1.0-py3-none-any.whl")]  # pip would fail on it
    bundle = out / f"services-{wheelhouse.profile_key('services', requirements)}.tar"
    with tarfile.open(bundle, "w") as tar:
        tar.addfile(tarfile.TarInfo("requirements.txt"))
    content_hash = hashlib.sha256(bundle.read_bytes()).hexdigest()[:12]
    adopted = wheelhouse.profile_archive("services", requirements, out)
    assert (adopted.path.name, adopted.built) == (f"{bundle.stem}-{content_hash}.tar", False)
    assert sorted(out.iterdir()) == [adopted.path]
