"""Fixture sysfs trees for the VFIO preflight, built in tmp_path the way the kernel lays them out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


class SysfsTree:
    """/sys with PCI devices, IOMMU groups, drivers and framebuffers, as symlinks like the real one."""

    GPU, AUDIO, BRIDGE, SATA, NIC, GPU2 = (
        "0000:41:00.0",
        "0000:41:00.1",
        "0000:40:01.1",
        "0000:00:17.0",
        "0000:42:00.0",
        "0000:43:00.0",
    )

    def __init__(self, root: Path, iommu: bool = True, vfio_loaded: bool = True):
        self.root = root
        (root / "kernel").mkdir(parents=True)
        (root / "bus" / "pci" / "devices").mkdir(parents=True)
        if iommu:
            (root / "kernel" / "iommu_groups").mkdir()
        if vfio_loaded:
            self.driver("vfio-pci")

    def driver(self, name: str) -> Path:
        path = self.root / "bus" / "pci" / "drivers" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def device(
        self, address: str, pci_class: int, group: int | None, driver: str | None = None, boot_vga: bool = False
    ) -> Path:
        real = self.root / "devices" / "pci0000:00" / address
        real.mkdir(parents=True)
        (real / "class").write_text(f"{pci_class:#08x}\n")
        if pci_class >> 16 == 0x03:
            (real / "boot_vga").write_text("1\n" if boot_vga else "0\n")
        (self.root / "bus" / "pci" / "devices" / address).symlink_to(
            os.path.relpath(real, self.root / "bus" / "pci" / "devices")
        )
        if group is not None:
            members = self.root / "kernel" / "iommu_groups" / str(group) / "devices"
            members.mkdir(parents=True, exist_ok=True)
            (members / address).symlink_to(os.path.relpath(real, members))
            (real / "iommu_group").symlink_to(os.path.relpath(members.parent, real))
        if driver is not None:
            (real / "driver").symlink_to(os.path.relpath(self.driver(driver), real))
        return real

    def ids(self, device: Path, vendor: int, product: int) -> None:
        (device / "vendor").write_text(f"{vendor:#06x}\n")
        (device / "device").write_text(f"{product:#06x}\n")

    def module_parameter(self, module: str, parameter: str, value: str) -> None:
        path = self.root / "module" / module / "parameters"
        path.mkdir(parents=True, exist_ok=True)
        (path / parameter).write_text(value + "\n")

    def intel_iommu(self, unit: str, ecap: int) -> None:
        """An Intel IOMMU unit as /sys/class/iommu shows it, with its extended capabilities."""
        path = self.root / "class" / "iommu" / unit / "intel-iommu"
        path.mkdir(parents=True)
        (path / "ecap").write_text(f"{ecap:x}\n")

    def framebuffer(self, device: Path) -> None:
        fb = self.root / "class" / "graphics" / "fb0"
        fb.mkdir(parents=True)
        (fb / "device").symlink_to(os.path.relpath(device, fb))

    def gpu_with_audio(self, group: int = 12, **gpu: object) -> None:
        """The usual card: VGA and HDMI audio functions, behind a root port, in one group."""
        self.device(self.BRIDGE, 0x060400, group, driver="pcieport")
        self.device(self.GPU, 0x030000, group, driver="nouveau", **gpu)  # type: ignore[arg-type]
        self.device(self.AUDIO, 0x040300, group, driver="snd_hda_intel")


@pytest.fixture
def sysfs(tmp_path):
    def make(**options: bool) -> SysfsTree:
        return SysfsTree(tmp_path / "sys", **options)

    return make
