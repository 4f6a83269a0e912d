"""The remote host's sysfs, copied by the shell script the VFIO preflight runs over SSH: on every
fixture tree of tests/vms/test_vfio.py the copy gives the preflight's own answer (the script runs
here in a real shell, as `ssh HOST sh -s` runs it there), and the ways it fails name their cause."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lab.config import load_config
from lab.errors import LabError
from tests.conftest import hf_model_dir, write_lab
from vms import libvirt as provider
from vms import sysfs_copy, vfio

Outcome = tuple[str, object]


def outcome(addresses: list[str], root: Path) -> Outcome:
    loaded: list[bool] = []
    try:
        passed = vfio.preflight(addresses, root, load_module=lambda: loaded.append(True))
    except vfio.VfioError as exc:
        return "refused", str(exc)
    return "passed", (passed, loaded)


def gpu_with_audio(tree) -> list[str]:
    tree.gpu_with_audio()
    return [tree.GPU]


def alone_without_vfio(tree) -> list[str]:
    tree.device(tree.GPU, 0x030200, group=3)
    return [tree.GPU]


def two_gpus_one_group(tree) -> list[str]:
    tree.device(tree.GPU, 0x030000, group=5)
    tree.device(tree.GPU2, 0x030200, group=5)
    return [tree.GPU, tree.GPU2]


def missing(tree) -> list[str]:
    tree.gpu_with_audio()
    return ["0000:09:00.0"]


def not_a_gpu(tree) -> list[str]:
    tree.gpu_with_audio()
    tree.device(tree.NIC, 0x020000, group=13, driver="igb")
    return [tree.NIC]


def shared_group(tree) -> list[str]:
    tree.gpu_with_audio()
    tree.device(tree.SATA, 0x010601, group=12, driver="ahci")
    return [tree.GPU]


def boot_vga(tree) -> list[str]:
    tree.gpu_with_audio(boot_vga=True)
    return [tree.GPU]


def framebuffer(tree) -> list[str]:
    tree.gpu_with_audio()
    tree.framebuffer(tree.root / "bus" / "pci" / "devices" / tree.GPU)
    return [tree.GPU]


def nvidia_modeset(tree) -> list[str]:
    tree.ids(tree.device(tree.GPU, 0x030200, group=7, driver="nvidia"), 0x10DE, 0x2335)
    tree.module_parameter("nvidia_drm", "modeset", "Y")
    return [tree.GPU]


def on_vfio_pci(tree) -> list[str]:
    tree.device(tree.GPU, 0x030200, group=7, driver="vfio-pci")
    return [tree.GPU]


def no_interrupt_remapping(tree) -> list[str]:
    tree.device(tree.GPU, 0x030200, group=7)
    tree.intel_iommu("dmar0", 0xF050DA)
    tree.intel_iommu("dmar1", 0xF050D2)
    return [tree.GPU]


def unsafe_interrupts_allowed(tree) -> list[str]:
    no_interrupt_remapping(tree)
    tree.module_parameter("vfio_iommu_type1", "allow_unsafe_interrupts", "Y")
    return [tree.GPU]


CASES: dict[str, tuple[dict[str, bool], Callable]] = {
    "gpu-with-audio": ({}, gpu_with_audio),
    "alone-without-vfio": ({"vfio_loaded": False}, alone_without_vfio),
    "two-gpus-one-group": ({}, two_gpus_one_group),
    "iommu-off": ({"iommu": False}, alone_without_vfio),
    "missing": ({}, missing),
    "not-a-gpu": ({}, not_a_gpu),
    "shared-group": ({}, shared_group),
    "boot-vga": ({}, boot_vga),
    "framebuffer": ({}, framebuffer),
    "nvidia-modeset": ({}, nvidia_modeset),
    "on-vfio-pci": ({}, on_vfio_pci),
    "no-interrupt-remapping": ({}, no_interrupt_remapping),
    "unsafe-interrupts-allowed": ({}, unsafe_interrupts_allowed),
}


@pytest.mark.parametrize("case", CASES)
def test_the_copy_gives_the_preflight_the_answer_the_original_gives(sysfs, tmp_path, case):
    options, build = CASES[case]
    tree = sysfs(**options)
    addresses = build(tree)
    copy = sysfs_copy.copy([], addresses, tmp_path / "copy", root=str(tree.root))
    assert outcome(addresses, copy) == outcome(addresses, tree.root)


def test_the_copy_holds_only_what_the_preflight_reads(sysfs, tmp_path):
    tree = sysfs()
    tree.gpu_with_audio()
    tree.device(tree.NIC, 0x020000, group=13, driver="igb")  # in no group the GPU's is in
    copy = sysfs_copy.copy([], [tree.GPU], tmp_path / "copy", root=str(tree.root))
    assert (copy / "kernel" / "iommu_groups" / "12" / "devices" / tree.AUDIO / "class").is_file()  # in the GPU's group
    assert not (copy / "bus" / "pci" / "devices" / tree.NIC).exists()
    assert (copy / "kernel" / "iommu_groups" / "13").is_dir()  # the groups are listed, not their members
    assert not (copy / "kernel" / "iommu_groups" / "13" / "devices").exists()


@pytest.mark.parametrize(
    ("uri", "argv"),
    [
        (
            "qemu+ssh://root@gpu-host:2222/system?keyfile=/srv/keys/id_ed25519",
            ["-p", "2222", "-i", "/srv/keys/id_ed25519", "root@gpu-host"],
        ),
        ("qemu+ssh://gpu-host/system", ["gpu-host"]),
        ("qemu+tls://gpu-host/system", None),
        ("qemu:///system", None),
    ],
)
def test_ssh_reaches_the_host_of_a_qemu_ssh_uri_only(uri, argv):
    found = sysfs_copy.ssh_argv(uri)
    assert found == (None if argv is None else ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15", *argv])


def test_a_failed_command_or_a_strange_entry_is_named(tmp_path):
    with pytest.raises(sysfs_copy.RemoteSysfsError, match=r"reading sysfs with `env false` failed \(exit 1\)"):
        sysfs_copy.copy(["env", "false"], [], tmp_path)
    with pytest.raises(sysfs_copy.RemoteSysfsError, match="no sysfs at /nonexistent"):
        sysfs_copy.copy([], [], tmp_path, root="/nonexistent")
    for line in ("L bus/pci/devices/x /sys/devices/x", "F ../etc/passwd x", "X kernel"):
        with pytest.raises(sysfs_copy.RemoteSysfsError, match="unexpected sysfs entry"):
            sysfs_copy._rebuild(tmp_path, line)


def test_a_remote_gpu_host_that_ssh_cannot_reach_stops_up_naming_node_and_uri(tmp_path):
    """Loopback only: nothing listens on port 1, so ssh fails at once, before anything is defined."""
    config = write_lab(tmp_path, "gr", "10.93.0", provider="libvirt")
    data = yaml.safe_load(config.read_text())
    data["nodes"][2].update(libvirt_uri="qemu+ssh://root@127.0.0.1:1/system", gpu={"pci": ["0000:41:00.0"]})
    data["llm"]["model"] = str(hf_model_dir(tmp_path / "model"))
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(LabError) as caught:
        provider.gpu_preflight(load_config(config), lambda _: None)
    message = str(caught.value)
    assert "nodes[2].gpu.pci: preflight on qemu+ssh://root@127.0.0.1:1/system: reading sysfs with `ssh" in message
