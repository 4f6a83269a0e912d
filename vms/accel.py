"""Which accelerator a VM can have here: KVM needs CPU virtualisation flags and a usable /dev/kvm."""

from __future__ import annotations

import os
from pathlib import Path


def kvm_usable(cpuinfo: Path = Path("/proc/cpuinfo"), device: Path = Path("/dev/kvm")) -> tuple[bool, str]:
    """(usable, why) — the device file alone is not enough: without vmx/svm it cannot run a guest kernel."""
    flags = set()
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    if not flags & {"vmx", "svm"}:
        return False, "the CPU shows no hardware virtualisation (no vmx/svm flag in /proc/cpuinfo)"
    if not device.exists():
        return False, f"{device} does not exist (load kvm_intel or kvm_amd)"
    if not os.access(device, os.R_OK | os.W_OK):
        return False, f"{device} is not readable and writable by this user"
    return True, "the CPU has hardware virtualisation and /dev/kvm is usable"
