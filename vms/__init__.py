"""Provisioning: providers that turn lab.yaml into reachable nodes."""

from __future__ import annotations

from pathlib import Path

from lab.config import LabConfig
from lab.errors import LabError
from vms.accel import kvm_usable
from vms.base import Provider

PROVIDERS = ("libvirt", "nspawn")
LIBVIRT_SOCKET = Path("/var/run/libvirt/libvirt-sock")


def choose(lab: LabConfig, override: str | None = None) -> tuple[str, str]:
    """(provider name, why): the command line beats lab.yaml; `auto` follows the hardware."""
    wanted = override or lab.provider
    if wanted not in ("auto", *PROVIDERS):
        raise LabError(f"--provider {wanted}: unknown provider; use auto, libvirt or nspawn")
    if wanted != "auto":
        source = "--provider" if override else f"{lab.path.name} provider"
        return wanted, f"{source} says {wanted}"
    usable, why = kvm_usable()
    if usable:
        return "libvirt", f"auto: {why}, so KVM virtual machines"
    return "nspawn", f"auto: {why}, so systemd-nspawn containers (use --provider libvirt for TCG VMs)"


def get(name: str) -> Provider:
    if name == "nspawn":
        from vms.nspawn import NspawnProvider

        return NspawnProvider()
    if name == "libvirt":
        from vms.libvirt import LibvirtProvider

        return LibvirtProvider()
    raise LabError(f"unknown provider '{name}'; use libvirt or nspawn")
