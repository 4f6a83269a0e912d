"""libvirt XML for the lab: the network, the storage pool and volumes, and one domain per node.

Pure functions of small frozen specs, so tests validate every document with virt-xml-validate
without a libvirt daemon. A domain carries its spec in <metadata>, so `lab up` can say what
changed in lab.yaml since the VM was defined instead of silently ignoring it.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, fields
from ipaddress import IPv4Interface
from typing import Literal

from vms.vfio import pci_parts

METADATA_NS = "urn:agentic-lab:libvirt:1"
"""The namespace of the lab's <metadata> element in every domain it defines."""
Accelerator = Literal["kvm", "tcg"]
ET.register_namespace("lab", METADATA_NS)


PCI_HOLE64_GIB = 1024
"""The guest's 64-bit PCI window on a GPU node: room for the BARs of data-centre cards, which map
their whole memory (80-141 GiB on H100/H200) or more; QEMU's q35 default is sized for small cards."""
LOCKED_OVERHEAD_MB = 1024
"""Locked memory beyond the guest's own: QEMU's, as libvirt allows a VFIO guest (memory + 1 GiB)."""


@dataclass(frozen=True)
class DomainSpec:
    """Everything a node's domain XML is made from; stored in the domain to detect changes."""

    lab: str
    name: str
    accelerator: Accelerator
    vcpus: int
    memory_mb: int
    image: str
    """The base volume the disk overlays: a new image means a new VM."""
    disk: str
    seed: str
    network: str
    mac: str
    console_log: str
    kernel: str = ""
    """Direct kernel boot (the built image); empty: boot the disk's own bootloader (image.file)."""
    initrd: str = ""
    cmdline: str = ""
    hostdevs: tuple[str, ...] = ()
    hugepages: bool = False
    lock_memory: bool = False

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DomainSpec:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        return cls(**{**data, "hostdevs": tuple(data.get("hostdevs", ()))})

    def changes(self, wanted: DomainSpec) -> list[str]:
        """'field: old -> new' for every field that differs from `wanted`."""
        old, new = asdict(self), asdict(wanted)
        return [f"{key}: {old[key]} -> {new[key]}" for key in new if old.get(key) != new[key]]


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = text
    return element


def _render(root: ET.Element) -> str:
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def network_xml(name: str, bridge: str, gateway: IPv4Interface, nat: bool = False) -> str:
    """An isolated network: no <forward>, so libvirt routes nothing off the bridge.

    The issue asked for NAT, but no VM traffic may leave the host: the nodes need only each
    other and the host (the controller, at the gateway address), and the image already holds
    every package. An isolated network gives exactly that with libvirt's own firewall rules
    (forwarding to or from the bridge is rejected), without host firewall rules of ours that
    could drift from libvirt's. Addresses are static (cloud-init), so there is no DHCP or DNS.

    `nat` (lab.yaml's network.nat, off by default) is the one exception, for vLLM fetching its
    model from a hub: libvirt's NAT forward and its DNS at the gateway (still no DHCP).
    """
    root = ET.Element("network")
    _sub(root, "name", name)
    if nat:
        _sub(root, "forward", mode="nat")
    _sub(root, "bridge", name=bridge, stp="off", delay="0")
    _sub(root, "dns", enable="yes" if nat else "no")
    _sub(root, "ip", address=str(gateway.ip), prefix=str(gateway.network.prefixlen))
    return _render(root)


def pool_xml(name: str, path: str) -> str:
    root = ET.Element("pool", type="dir")
    _sub(root, "name", name)
    target = _sub(root, "target")
    _sub(target, "path", path)
    return _render(root)


def volume_xml(name: str, capacity: int, fmt: Literal["raw", "qcow2"], backing: tuple[str, str] | None = None) -> str:
    """A volume of `capacity` bytes; `backing` (path, format) makes it a copy-on-write overlay.
    Mode 0600: a node's seed and its disk hold its SSH host private key (libvirt hands each to
    the QEMU process that uses it)."""
    root = ET.Element("volume")
    _sub(root, "name", name)
    _sub(root, "capacity", str(capacity), unit="bytes")
    _sub(root, "allocation", "0", unit="bytes")
    target = _sub(root, "target")
    _sub(target, "format", type=fmt)
    _sub(_sub(target, "permissions"), "mode", "0600")
    if backing is not None:
        store = _sub(root, "backingStore")
        _sub(store, "path", backing[0])
        _sub(store, "format", type=backing[1])
    return _render(root)


def domain_xml(spec: DomainSpec) -> str:
    root = ET.Element("domain", type="kvm" if spec.accelerator == "kvm" else "qemu")
    _sub(root, "name", spec.name)
    metadata = _sub(root, "metadata")
    _sub(metadata, f"{{{METADATA_NS}}}node", spec.to_json(), lab=spec.lab)
    _sub(root, "memory", str(spec.memory_mb), unit="MiB")
    _sub(root, "vcpu", str(spec.vcpus))
    if spec.hugepages or spec.lock_memory:
        backing = _sub(root, "memoryBacking")
        if spec.hugepages:
            _sub(backing, "hugepages")
        if spec.lock_memory:
            _sub(backing, "locked")
    if spec.lock_memory:  # libvirt needs a hard limit with <locked/>: what it allows a VFIO guest itself
        _sub(_sub(root, "memtune"), "hard_limit", str(spec.memory_mb + LOCKED_OVERHEAD_MB), unit="MiB")
    _os(root, spec)
    features = _sub(root, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    _sub(root, "cpu", mode=_cpu_mode(spec))
    _sub(root, "clock", offset="utc")
    _sub(root, "on_poweroff", "destroy")
    _sub(root, "on_reboot", "restart")
    _sub(root, "on_crash", "destroy")
    _devices(_sub(root, "devices"), spec)
    return _render(root)


def _cpu_mode(spec: DomainSpec) -> str:
    if spec.hostdevs:  # the GPU's driver and CUDA see the host CPU's own features and address bits
        return "host-passthrough"
    # TCG's default qemu64 CPU lacks AVX/AVX2, which prebuilt inference engines (llama.cpp) use;
    # 'maximum' gives the guest everything QEMU can emulate (AVX2 since QEMU 7.2).
    return "host-model" if spec.accelerator == "kvm" else "maximum"


def _os(root: ET.Element, spec: DomainSpec) -> None:
    # UEFI for a GPU node: SeaBIOS cannot map the 64-bit BARs of cards with tens of GiB of memory
    os_element = _sub(root, "os", firmware="efi") if spec.hostdevs else _sub(root, "os")
    _sub(os_element, "type", "hvm", arch="x86_64", machine="q35")
    if spec.kernel:
        _sub(os_element, "kernel", spec.kernel)
        _sub(os_element, "initrd", spec.initrd)
        _sub(os_element, "cmdline", spec.cmdline)
    else:
        _sub(os_element, "boot", dev="hd")


def _devices(devices: ET.Element, spec: DomainSpec) -> None:
    _disk(devices, spec.disk, "qcow2", "vda")
    _disk(devices, spec.seed, "raw", "vdb", readonly=True)
    interface = _sub(devices, "interface", type="network")
    _sub(interface, "source", network=spec.network)
    _sub(interface, "mac", address=spec.mac)
    _sub(interface, "model", type="virtio")
    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=spec.console_log, append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    rng = _sub(devices, "rng", model="virtio")
    _sub(rng, "backend", "/dev/urandom", model="random")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    if spec.hostdevs:
        root_port = _sub(devices, "controller", type="pci", index="0", model="pcie-root")
        _sub(root_port, "pcihole64", str(PCI_HOLE64_GIB), unit="GiB")
    for address in spec.hostdevs:
        hostdev = _sub(devices, "hostdev", mode="subsystem", type="pci", managed="yes")
        _sub(_sub(hostdev, "source"), "address", **pci_parts(address))


def _disk(devices: ET.Element, path: str, fmt: str, target: str, readonly: bool = False) -> None:
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type=fmt)
    _sub(disk, "source", file=path)
    _sub(disk, "target", dev=target, bus="virtio")
    if readonly:
        _sub(disk, "readonly")
