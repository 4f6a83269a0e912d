"""cloud-init seeds hold each node's SSH host private key: only their owner (root) reads them,
in the node's root and its overlay layer on the host (nspawn) and in the ISO a VM boots (libvirt)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import yaml

from lab.config import LabConfig, load_config
from lab.keys import ensure_keypair
from tests.conftest import require_root, write_lab
from vms import host
from vms.image import NodeImage
from vms.libvirt import seed_iso
from vms.nspawn import SEED_DIR, NspawnProvider
from vms.seed import Seed, make_seed

FILES = ("meta-data", "user-data", "network-config")


def a_seed(tmp_path: Path) -> tuple[LabConfig, Seed]:
    """A lab and its agent-a's seed, which holds the node's host private key."""
    lab = load_config(write_lab(tmp_path, "ts", "10.91.0", provider="nspawn"))
    login = ensure_keypair(tmp_path / "keys" / "login", "login")
    host_key = ensure_keypair(tmp_path / "keys" / "host", "host")
    seed = make_seed(lab, lab.node("agent-a"), login, host_key, {"id": "host0"})
    assert host_private_key(seed.user_data) == host_key.private.read_text()
    return lab, seed


def host_private_key(user_data: str) -> str:
    return yaml.safe_load(user_data)["ssh_keys"]["ed25519_private"]


def assert_private(directory: Path) -> None:
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in FILES:
        info = (directory / name).stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid) == (0o600, os.geteuid()), name


def test_seed_files_are_written_for_their_owner_only(tmp_path):
    _, seed = a_seed(tmp_path)
    directory = tmp_path / "seed"
    directory.mkdir(mode=0o755)
    (directory / "user-data").write_text("an older, world-readable seed\n")
    (directory / "user-data").chmod(0o644)
    seed.write(directory)
    assert_private(directory)
    assert (directory / "user-data").read_text() == seed.user_data


def test_the_vm_seed_iso_keeps_the_files_private(tmp_path):
    _, seed = a_seed(tmp_path)
    work = tmp_path / "iso"
    work.mkdir(mode=0o700)
    iso = seed_iso(seed, work)
    listing = subprocess.run(["isoinfo", "-R", "-l", "-i", str(iso)], capture_output=True, text=True, check=True).stdout
    modes = {line.split()[-1]: line.split()[0] for line in listing.splitlines() if line.startswith("-")}
    assert modes == dict.fromkeys(FILES, "-rw-------")


def test_a_containers_seed_is_root_only_in_its_overlay_layer_on_the_host(tmp_path):
    require_root("an overlay mount", ["mount"])
    lab, seed = a_seed(tmp_path)
    lower = tmp_path / "image" / "rootfs"
    (lower / "var/lib/cloud").mkdir(parents=True)
    image = NodeImage("0" * 16, lower, lower / "vmlinuz", lower / "initrd.img", ())
    provider = NspawnProvider()
    root = provider._mount_root(lab, lab.node("agent-a"), image)
    try:
        seed.write(root / SEED_DIR)
        assert_private(root / SEED_DIR)
    finally:
        provider._unmount(root)
    upper = lab.state_dir / "nodes" / "agent-a" / "upper" / SEED_DIR
    assert_private(upper)
    assert os.geteuid() == 0 and host_private_key((upper / "user-data").read_text()) == host_private_key(seed.user_data)
    assert not host.is_mounted(root)


def test_only_a_nat_lab_gives_its_nodes_a_route_out_and_a_resolver(tmp_path):
    for directory in ("isolated", "nat"):
        (tmp_path / directory).mkdir()
    _, seed = a_seed(tmp_path / "isolated")
    [entry] = yaml.safe_load(seed.network_config)["ethernets"].values()
    assert "routes" not in entry and "write_files" not in yaml.safe_load(seed.user_data)
    config = write_lab(tmp_path / "nat", "tn", "10.92.0", provider="libvirt")
    data = yaml.safe_load(config.read_text())
    data["network"]["nat"] = True
    config.write_text(yaml.safe_dump(data))
    lab = load_config(config)
    keys = tmp_path / "nat" / "keys"
    seed = make_seed(
        lab, lab.node("llm"), ensure_keypair(keys / "l", "l"), ensure_keypair(keys / "h", "h"), {"id": "x"}
    )
    [entry] = yaml.safe_load(seed.network_config)["ethernets"].values()
    assert entry["routes"] == [{"to": "0.0.0.0/0", "via": "10.92.0.1"}]
    [resolv] = yaml.safe_load(seed.user_data)["write_files"]
    assert (resolv["path"], resolv["content"]) == ("/etc/resolv.conf", "nameserver 10.92.0.1\n")
