"""A copy of the part of a remote host's sysfs that the VFIO preflight reads, made over SSH, so the
preflight (vms/vfio.py) checks a GPU on a remote libvirt host as it does on this one.

A POSIX shell script runs there (`ssh HOST sh -s -- /sys ADDRESS...`) and prints one line per entry:
`D path` a directory, `F path value` a one-line file, `L path target` a symlink as readlink gives
it. Paths are relative to the sysfs root and symlinks keep their relative targets, so the copy
resolves as the original does (the framebuffer and IOMMU-group checks compare resolved paths).
Only what the preflight reads is copied: the IOMMU groups, the requested devices with their
drivers and groups' members, the IOMMU units' capabilities, the framebuffers' devices, two module
parameters and whether vfio-pci is loaded.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from lab.errors import LabError

SCRIPT = r"""
set -u
root=$1; shift
cd "$root" || { echo "no sysfs at $root" >&2; exit 3; }
abs=$(pwd -P)
rel() { p=$(readlink -f "$1") && printf '%s' "${p#"$abs"/}"; }
dir() { [ -d "$1" ] && printf 'D %s\n' "$1"; return 0; }
file() { [ -f "$1" ] && printf 'F %s %s\n' "$1" "$(head -n 1 "$1" 2>/dev/null)"; return 0; }
link() {  # a symlink, then what it points at as a directory
  [ -L "$1" ] || { dir "$1"; return 0; }
  printf 'L %s %s\n' "$1" "$(readlink "$1")"
  [ -e "$1" ] && dir "$(rel "$1")"
  return 0
}
device() {  # a PCI function, as bus/pci/devices/ADDRESS or an IOMMU group's member
  link "$1"
  [ -e "$1" ] || return 0
  real=$(rel "$1")
  for f in class boot_vga vendor device; do file "$real/$f"; done
  link "$real/driver"
}
dir kernel/iommu_groups
for g in kernel/iommu_groups/*; do dir "$g"; done
file module/vfio_iommu_type1/parameters/allow_unsafe_interrupts
file module/nvidia_drm/parameters/modeset
dir bus/pci/drivers/vfio-pci
for unit in class/iommu/*; do
  [ -e "$unit" ] || continue
  link "$unit"
  file "$(rel "$unit")/intel-iommu/ecap"
done
for fb in class/graphics/fb*; do
  [ -e "$fb" ] || continue
  link "$fb"
  device "$(rel "$fb")/device"
done
for address in "$@"; do
  device "bus/pci/devices/$address"
  group=bus/pci/devices/$address/iommu_group
  [ -e "$group" ] || continue
  link "$(rel "bus/pci/devices/$address")/iommu_group"
  for member in "$(rel "$group")"/devices/*; do device "$member"; done
done
"""

LOAD_VFIO = 'if [ "$(id -u)" = 0 ]; then modprobe vfio-pci; else sudo -n modprobe vfio-pci; fi'
"""vfio-pci loaded on the remote host (root, or passwordless sudo for modprobe)."""


class RemoteSysfsError(LabError):
    """The remote host's sysfs could not be read over SSH; the message names the host and the cause."""


def ssh_argv(uri: str) -> list[str] | None:
    """The ssh command that reaches the host of a qemu+ssh:// libvirt URI (its user, port and keyfile);
    None for another transport (tls, tcp, libssh), over which no command runs."""
    url = urlparse(uri)
    if url.hostname is None or url.scheme.split("+", 1)[-1] != "ssh":
        return None
    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]
    if url.port is not None:
        argv += ["-p", str(url.port)]
    if keyfile := parse_qs(url.query).get("keyfile"):
        argv += ["-i", keyfile[0]]
    return [*argv, f"{url.username}@{url.hostname}" if url.username else url.hostname]


def copy(run: Sequence[str], addresses: Sequence[str], into: Path, root: str = "/sys") -> Path:
    """Run SCRIPT with `run` (an ssh argv, or a local shell in tests) and rebuild its entries under `into`."""
    result = subprocess.run(
        [*run, "sh", "-s", "--", root, *addresses],
        input=SCRIPT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RemoteSysfsError(
            f"reading sysfs with `{' '.join(run)}` failed ({result.stderr.strip() or f'exit {result.returncode}'})"
        )
    for line in result.stdout.splitlines():
        _rebuild(into, line)
    return into


def _rebuild(into: Path, line: str) -> None:
    kind, _, rest = line.partition(" ")
    relative, _, value = rest.partition(" ")
    if not relative or relative.startswith("/") or ".." in Path(relative).parts:
        raise RemoteSysfsError(f"unexpected sysfs entry {line!r}")
    path = into / relative
    if kind == "D":
        path.mkdir(parents=True, exist_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "F":
        path.write_text(value + "\n")
    elif kind == "L" and not value.startswith("/"):  # sysfs links are relative, so they resolve in the copy too
        if not path.is_symlink():
            path.symlink_to(value)
    else:
        raise RemoteSysfsError(f"unexpected sysfs entry {line!r}")


def load_vfio(run: Sequence[str]) -> str | None:
    """vfio-pci loaded on the host `run` reaches; None when it loaded, else why not."""
    result = subprocess.run([*run, LOAD_VFIO], capture_output=True, text=True, timeout=60, check=False)
    return None if result.returncode == 0 else (result.stderr.strip() or f"modprobe exited {result.returncode}")
