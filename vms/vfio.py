"""GPU passthrough preflight: read sysfs and refuse, with the reason and the fix, before libvirt is asked.

`preflight` takes the sysfs root as a parameter so tests run it on fixture trees. It returns
every PCI function that must go to the VM: the requested devices and the other functions of
their IOMMU groups that must travel with them (a GPU's audio function). PCI bridges in a
group stay with the host, as VFIO allows.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from lab.errors import LabError

DISPLAY_CLASS = 0x03
INTERRUPT_REMAPPING = 1 << 3
"""VT-d's extended capability register, bit 3 (IR): the unit remaps interrupts."""
BRIDGE_SUBCLASS = 0x0604
CLASS_NAMES = {
    0x00: "unclassified device",
    0x01: "storage controller",
    0x02: "network controller",
    0x03: "display controller",
    0x04: "multimedia controller",
    0x05: "memory controller",
    0x06: "bridge",
    0x07: "communication controller",
    0x08: "system peripheral",
    0x0C: "serial bus controller (USB/SMBus)",
}
LoadModule = Callable[[], str | None]


class VfioError(LabError):
    """The GPU cannot be passed through; the message says why and what to do."""


def modprobe_vfio() -> str | None:
    """Load vfio-pci on this host; None when it loaded, else the reason it did not."""
    try:
        result = subprocess.run(["modprobe", "vfio-pci"], check=False, capture_output=True, text=True)
    except FileNotFoundError:
        return "modprobe is not installed (apt-get install kmod)"
    return None if result.returncode == 0 else (result.stderr.strip() or f"modprobe exited {result.returncode}")


def preflight(addresses: list[str], sysfs: Path = Path("/sys"), load_module: LoadModule = modprobe_vfio) -> list[str]:
    """The PCI functions to pass through for `addresses` (gpu.pci), or VfioError naming the reason."""
    groups_dir = sysfs / "kernel" / "iommu_groups"
    if not groups_dir.is_dir() or not any(groups_dir.iterdir()):
        raise VfioError(
            "the IOMMU is off (no entries in /sys/kernel/iommu_groups); enable VT-d or AMD-Vi in the "
            "firmware and boot with intel_iommu=on (or amd_iommu=on) iommu=pt"
        )
    _refuse_unremapped_interrupts(sysfs)
    passed: set[str] = set()
    for address in addresses:
        device = _device(sysfs, address)
        _refuse_console(sysfs, address, device)
        _refuse_held(sysfs, address, device)
        passed |= _group_members(sysfs, address, device, set(addresses))
    if not (sysfs / "bus" / "pci" / "drivers" / "vfio-pci").is_dir():
        reason = load_module()
        if reason is not None:
            raise VfioError(
                f"vfio-pci cannot be loaded ({reason}); "
                "install a kernel with VFIO (CONFIG_VFIO_PCI) and run `modprobe vfio-pci`"
            )
    return sorted(passed)


def _device(sysfs: Path, address: str) -> Path:
    device = sysfs / "bus" / "pci" / "devices" / address
    if not device.is_dir():
        raise VfioError(
            f"there is no PCI device {address} on this host; list the GPUs with `lspci -D | grep -Ei 'vga|3d|display'`"
        )
    pci_class = _class(device)
    if pci_class >> 16 != DISPLAY_CLASS:
        raise VfioError(
            f"{address} is a {_describe(device)}, not a display/3D controller; "
            "give the GPU's own address (`lspci -D | grep -Ei 'vga|3d|display'`)"
        )
    return device


def _refuse_console(sysfs: Path, address: str, device: Path) -> None:
    boot_vga = device / "boot_vga"
    drives_console = boot_vga.is_file() and boot_vga.read_text().strip() == "1"
    framebuffers = (sysfs / "class" / "graphics").glob("fb*/device")
    drives_console = drives_console or any(fb.resolve() == device.resolve() for fb in framebuffers)
    if drives_console:
        raise VfioError(
            f"{address} drives the host's console (it is the boot VGA device or has a framebuffer); "
            "pass a GPU the host does not display on, or move the host console to another GPU or the serial port"
        )


def _refuse_unremapped_interrupts(sysfs: Path) -> None:
    """VFIO refuses to assign a device where the IOMMU cannot remap interrupts (a guest could then
    inject interrupts into the host), unless vfio_iommu_type1's allow_unsafe_interrupts is set. Read
    from each Intel unit's capabilities; AMD-Vi remaps interrupts wherever it is on."""
    if _flag(sysfs / "module" / "vfio_iommu_type1" / "parameters" / "allow_unsafe_interrupts"):
        return
    for ecap in sorted((sysfs / "class" / "iommu").glob("dmar*/intel-iommu/ecap")):
        if not int(ecap.read_text().strip(), 16) & INTERRUPT_REMAPPING:
            raise VfioError(
                f"the IOMMU unit {ecap.parent.parent.name} cannot remap interrupts (no IR in its capabilities), "
                "and VFIO refuses to pass a device through without it; use a host whose IOMMU remaps interrupts, "
                "or, accepting that a guest could then inject interrupts into the host, "
                "`options vfio_iommu_type1 allow_unsafe_interrupts=1` in /etc/modprobe.d"
            )


def _refuse_held(sysfs: Path, address: str, device: Path) -> None:
    """The host's nvidia driver does not let go of a card that nvidia-persistenced, a display server
    or any CUDA process holds, and never with nvidia_drm's modeset on: libvirt's unbind then hangs or
    fails. Such a card is bound to vfio-pci at boot instead."""
    if _driver(device) != "nvidia":
        return
    why = (
        "nvidia_drm holds it with modeset=Y"
        if _flag(sysfs / "module" / "nvidia_drm" / "parameters" / "modeset")
        else "it lets go only when no nvidia-persistenced, display server or CUDA process holds the card"
    )
    ids = f"{_hex_id(device, 'vendor')}:{_hex_id(device, 'device')}"
    raise VfioError(
        f"{address} is bound to the host's nvidia driver, which libvirt cannot unbind reliably ({why}); "
        f"bind it to vfio-pci at boot: add vfio-pci.ids={ids} to the kernel command line "
        f"(or run `driverctl set-override {address} vfio-pci`) and reboot"
    )


def _flag(parameter: Path) -> bool:
    return parameter.is_file() and parameter.read_text().strip() in ("Y", "1")


def _hex_id(device: Path, name: str) -> str:
    path = device / name
    return f"{int(path.read_text().strip(), 16):04x}" if path.is_file() else "????"


def _group_members(sysfs: Path, address: str, device: Path, requested: set[str]) -> set[str]:
    """`address` and the functions of its IOMMU group that must travel with it."""
    link = device / "iommu_group"
    if not link.exists():
        raise VfioError(f"{address} is in no IOMMU group; enable the IOMMU for it in the firmware (VT-d/AMD-Vi)")
    group = link.resolve().name
    members = {address}
    for member in sorted((sysfs / "kernel" / "iommu_groups" / group / "devices").iterdir()):
        other = member.name
        if other == address or other in requested or _class(member) >> 8 == BRIDGE_SUBCLASS:
            continue
        if _slot(other) != _slot(address):
            driver = _driver(member)
            raise VfioError(
                f"{address} shares IOMMU group {group} with {other} ({_describe(member)}"
                f"{f', driver {driver}' if driver else ''}), which is not part of the GPU and cannot go with it; "
                "put the GPU in a slot with its own IOMMU group (or enable ACS in the firmware)"
            )
        members.add(other)
    return members


def _class(device: Path) -> int:
    return int((device / "class").read_text().strip(), 16)


def _describe(device: Path) -> str:
    pci_class = _class(device)
    return f"{CLASS_NAMES.get(pci_class >> 16, 'device')} (class {pci_class:#08x})"


def _driver(device: Path) -> str | None:
    link = device / "driver"
    return link.resolve().name if link.exists() else None


def _slot(address: str) -> str:
    """domain:bus:slot — the functions of one physical card share it."""
    return address.rsplit(".", 1)[0]


def pci_parts(address: str) -> dict[str, str]:
    """0000:41:00.1 as libvirt's <address> attributes."""
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    return {"domain": f"0x{domain}", "bus": f"0x{bus}", "slot": f"0x{slot}", "function": f"0x{function}"}
