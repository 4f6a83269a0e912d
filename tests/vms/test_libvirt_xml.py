"""The libvirt provider without a daemon: every XML it generates validates with libvirt's own
schemas (virt-xml-validate), GPUs become hostdevs after the preflight, the accelerator and LLM
backend follow the hardware, and a changed spec is seen."""

from __future__ import annotations

import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from ipaddress import IPv4Interface
from pathlib import Path

import pytest
import yaml

from lab.config import LabConfig, parse_config
from lab.errors import LabError
from lab.keys import ensure_keypair
from tests.conftest import hf_model_dir
from vms import libvirt as provider
from vms.domain import (
    LOCKED_OVERHEAD_MB,
    METADATA_NS,
    PCI_HOLE64_GIB,
    DomainSpec,
    domain_xml,
    network_xml,
    pool_xml,
    volume_xml,
)
from vms.seed import make_seed

GiB = 1024**3
MEDIA = provider.BootMedia(
    provider.Upload("tv-base-0123.raw", Path("/cache/disk.raw"), "raw", 8 * GiB),
    provider.Upload("tv-vmlinuz-0123", Path("/cache/vmlinuz"), "raw", 14 * 2**20),
    provider.Upload("tv-initrd-0123", Path("/cache/initrd.img"), "raw", 15 * 2**20),
)


def make_lab(directory: Path, llm_node: dict | None = None, **top: object) -> LabConfig:
    data = {
        "name": "tv",
        "provider": "libvirt",
        "network": {"subnet": "10.78.0.0/24"},
        "nodes": [
            {"name": "agent-a", "groups": ["agents"], "address": "10.78.0.11", "memory_mb": 512},
            {"name": "agent-b", "groups": ["agents", "tools"], "address": "10.78.0.12", "memory_mb": 512},
            {
                "name": "llm",
                "groups": ["llm"],
                "address": "10.78.0.13",
                "vcpus": 2,
                "memory_mb": 768,
                **(llm_node or {}),
            },
        ],
        **top,
    }
    if llm_node and "gpu" in llm_node:
        data["llm"] = {"model": str(hf_model_dir(directory / "model"))}
    return parse_config(data, directory / "lab.yaml")


def validate(tmp_path: Path, kind: str, xml: str) -> None:
    if shutil.which("virt-xml-validate") is None:
        pytest.fail("virt-xml-validate is missing; apt-get install libvirt-clients")
    document = tmp_path / f"{kind}.xml"
    document.write_text(xml)
    result = subprocess.run(["virt-xml-validate", str(document), kind], check=False, capture_output=True, text=True)
    assert result.returncode == 0, f"{kind} XML does not validate:\n{result.stderr}\n{xml}"


def domains(
    lab: LabConfig, hostdevs: dict[str, tuple[str, ...]], accelerator: str = "tcg", media=MEDIA
) -> dict[str, str]:
    return {
        spec.name: domain_xml(
            provider.LibvirtProvider._spec(lab, spec, accelerator, media, hostdevs.get(spec.name, ()))
        )
        for spec in lab.nodes
    }


def hostdev_addresses(xml: str) -> list[str]:
    found = []
    for address in ET.fromstring(xml).iterfind("devices/hostdev/source/address"):
        parts = {k: v.removeprefix("0x") for k, v in address.attrib.items()}
        found.append(f"{parts['domain']}:{parts['bus']}:{parts['slot']}.{parts['function']}")
    return found


def test_network_pool_and_volumes_validate(tmp_path):
    lab = make_lab(tmp_path)
    network = network_xml(provider.network_name(lab), provider.bridge_name(lab), IPv4Interface("10.78.0.1/24"))
    validate(tmp_path, "network", network)
    assert ET.fromstring(network).find("forward") is None, "the lab network must be isolated"
    routed = network_xml("tv-net", "tv-virbr", IPv4Interface("10.78.0.1/24"), nat=True)  # network.nat
    validate(tmp_path, "network", routed)
    assert ET.fromstring(routed).find("forward").get("mode") == "nat"
    assert ET.fromstring(routed).find("dns").get("enable") == "yes" and ET.fromstring(routed).find("ip/dhcp") is None
    validate(tmp_path, "storagepool", pool_xml(provider.pool_name(lab), provider.pool_path(lab)))
    validate(tmp_path, "storagevol", volume_xml("tv-base-0123.raw", 8 * GiB, "raw"))
    overlay = volume_xml("tv-llm.qcow2", 8 * GiB, "qcow2", ("/var/lib/libvirt/images/tv/tv-base-0123.raw", "raw"))
    validate(tmp_path, "storagevol", overlay)
    assert ET.fromstring(overlay).findtext("backingStore/path") == "/var/lib/libvirt/images/tv/tv-base-0123.raw"
    assert ET.fromstring(overlay).findtext("target/permissions/mode") == "0600"  # a node's disk holds its host key


@pytest.mark.parametrize("case", ["no-gpu", "gpu", "gpu-and-audio"])
def test_every_domain_validates_with_and_without_a_gpu(tmp_path, sysfs, case):
    tree = sysfs()
    if case == "gpu":
        tree.device(tree.GPU, 0x030000, group=7)
    elif case == "gpu-and-audio":
        tree.gpu_with_audio()
    lab = make_lab(tmp_path, llm_node={"gpu": {"pci": tree.GPU}} if case != "no-gpu" else None)
    messages: list[str] = []
    hostdevs = provider.gpu_preflight(lab, messages.append, sysfs=tree.root)
    accelerator = "tcg" if case == "no-gpu" else "kvm"  # a GPU node under TCG is refused before any XML
    rendered = domains(lab, hostdevs, accelerator=accelerator)
    for name, xml in rendered.items():
        validate(tmp_path, "domain", xml)
        root = ET.fromstring(xml)
        gpu_node = name == "llm" and case != "no-gpu"
        cpu = "host-passthrough" if gpu_node else {"tcg": "maximum", "kvm": "host-model"}[accelerator]
        assert root.get("type") == {"tcg": "qemu", "kvm": "kvm"}[accelerator] and root.find("cpu").get("mode") == cpu
        # a GPU node: UEFI and a 64-bit PCI window wide enough for a big card's BARs
        assert root.find("os").get("firmware") == ("efi" if gpu_node else None)
        hole = root.find("devices/controller[@model='pcie-root']/pcihole64")
        assert (hole.text, hole.get("unit")) == (str(PCI_HOLE64_GIB), "GiB") if gpu_node else hole is None
        assert root.findtext("os/cmdline") == provider.KERNEL_CMDLINE
        assert root.find("devices/serial/log").get("file") == str(tmp_path / ".lab" / "logs" / f"{name}.console.log")
        assert [d.get("bus") for d in root.iterfind("devices/disk/target")] == ["virtio", "virtio"]
        assert root.find("devices/interface/model").get("type") == "virtio"
    assert hostdev_addresses(rendered["agent-a"]) == []
    expected = {"no-gpu": [], "gpu": [tree.GPU], "gpu-and-audio": [tree.GPU, tree.AUDIO]}[case]
    assert hostdev_addresses(rendered["llm"]) == expected
    for hostdev in ET.fromstring(rendered["llm"]).iterfind("devices/hostdev"):
        assert hostdev.attrib == {"mode": "subsystem", "type": "pci", "managed": "yes"}
    if case == "gpu-and-audio":
        assert f"with {tree.AUDIO} from its IOMMU group" in messages[-1]


def test_kvm_domain_has_host_model_cpu_and_the_configured_memory_backing(tmp_path):
    lab = make_lab(tmp_path, llm_node={"hugepages": True, "lock_memory": True, "memory_mb": 16384})
    rendered = domains(lab, {}, accelerator="kvm")
    validate(tmp_path, "domain", rendered["llm"])
    root = ET.fromstring(rendered["llm"])
    assert root.get("type") == "kvm" and root.find("cpu").get("mode") == "host-model"
    assert root.find("memoryBacking/hugepages") is not None and root.find("memoryBacking/locked") is not None
    assert root.findtext("memory") == "16384" and root.findtext("vcpu") == "2"
    limit = root.find("memtune/hard_limit")  # libvirt needs one with locked memory
    assert (limit.text, limit.get("unit")) == (str(16384 + LOCKED_OVERHEAD_MB), "MiB")
    assert ET.fromstring(rendered["agent-a"]).find("memoryBacking") is None
    assert ET.fromstring(rendered["agent-a"]).find("memtune") is None


def test_a_users_cloud_image_boots_from_its_own_disk(tmp_path):
    image = tmp_path / "debian.qcow2"
    image.write_bytes(b"QFI\xfb" + bytes(20) + struct.pack(">Q", 2 * GiB) + bytes(64))
    lab = make_lab(tmp_path, image={"file": "debian.qcow2"})
    media = provider.boot_media(lab, lambda _msg: None)
    assert (media.base.fmt, media.base.capacity, media.kernel) == ("qcow2", 2 * GiB, None)
    rendered = domains(lab, {}, media=media)
    validate(tmp_path, "domain", rendered["agent-a"])
    os_element = ET.fromstring(rendered["agent-a"]).find("os")
    assert os_element.find("kernel") is None and os_element.find("boot").get("dev") == "hd"


def test_the_domain_carries_its_spec_and_a_change_is_named(tmp_path):
    lab = make_lab(tmp_path)
    spec = provider.LibvirtProvider._spec(lab, lab.node("llm"), "tcg", MEDIA, ())
    stored = ET.fromstring(domain_xml(spec)).find(f"metadata/{{{METADATA_NS}}}node")
    assert stored.get("lab") == "tv"
    assert DomainSpec.from_json(stored.text) == spec
    assert spec.changes(spec) == []
    edited = make_lab(tmp_path, llm_node={"memory_mb": 1024})
    changed = provider.LibvirtProvider._spec(edited, edited.node("llm"), "tcg", MEDIA, ())
    assert spec.changes(changed) == ["memory_mb: 768 -> 1024"]


def test_macs_are_stable_distinct_and_matched_by_the_seed(tmp_path):
    lab = make_lab(tmp_path)
    macs = [provider.mac_address(lab, spec) for spec in lab.nodes]
    assert len(set(macs)) == 3 and all(mac.startswith("52:54:00:") for mac in macs)
    assert macs == [provider.mac_address(make_lab(tmp_path), spec) for spec in lab.nodes]
    login = ensure_keypair(tmp_path / "login", "login")
    host_key = ensure_keypair(tmp_path / "host", "host")
    spec = lab.node("agent-b")
    seed = make_seed(lab, spec, login, host_key, provider.LibvirtProvider._interface(lab, spec))
    network = yaml.safe_load(seed.network_config)
    assert network["ethernets"]["lab0"] == {
        "match": {"macaddress": macs[1]},
        "set-name": "lab0",
        "addresses": ["10.78.0.12/24"],
    }


def test_accelerator_follows_the_hardware_unless_lab_yaml_forces_it(tmp_path, monkeypatch):
    monkeypatch.setattr(provider, "kvm_usable", lambda: (False, "no vmx/svm flag"))
    assert provider.choose_accelerator(make_lab(tmp_path), "qemu:///system", None) == ("tcg", "no vmx/svm flag")
    assert provider.choose_accelerator(make_lab(tmp_path, accelerator="tcg"), "qemu:///system", None)[0] == "tcg"
    with pytest.raises(LabError, match="accelerator: kvm, but no vmx/svm flag; set accelerator: auto or tcg"):
        provider.choose_accelerator(make_lab(tmp_path, accelerator="kvm"), "qemu:///system", None)
    monkeypatch.setattr(provider, "kvm_usable", lambda: (True, "usable"))
    assert provider.choose_accelerator(make_lab(tmp_path), "qemu:///system", None) == ("kvm", "usable")
    assert provider.choose_accelerator(make_lab(tmp_path, accelerator="tcg"), "qemu:///system", None)[0] == "tcg"


def test_llm_backend_follows_the_gpu(tmp_path):
    assert make_lab(tmp_path).llm_backend[0] == "llamacpp"
    assert make_lab(tmp_path, llm_node={"gpu": {"pci": "0000:41:00.0"}}).llm_backend == (
        "vllm",
        "llm has GPU 0000:41:00.0",
    )
    model = str(hf_model_dir(tmp_path / "model"))
    assert make_lab(tmp_path, llm={"backend": "vllm", "model": model}).llm_backend == (
        "vllm",
        "llm.backend: vllm in lab.yaml",
    )


def test_a_refused_gpu_names_the_node_field(tmp_path, sysfs):
    tree = sysfs(iommu=False)
    tree.device(tree.GPU, 0x030000, group=None)
    lab = make_lab(tmp_path, llm_node={"gpu": {"pci": tree.GPU}})
    with pytest.raises(LabError) as info:
        provider.gpu_preflight(lab, lambda _msg: None, sysfs=tree.root)
    assert str(info.value).startswith(f"{tmp_path / 'lab.yaml'}: nodes[2].gpu.pci: the IOMMU is off")


def test_remote_nodes_keep_their_console_log_on_their_host(tmp_path):
    lab = make_lab(tmp_path, llm_node={"libvirt_uri": "qemu+ssh://gpu-host/system"})
    assert not provider.is_local("qemu+ssh://gpu-host/system") and provider.is_local("qemu:///system")
    assert provider.console_log(lab, lab.node("llm")) == "/var/log/libvirt/qemu/tv-llm.console.log"


def meminfo(tmp_path: Path, total: int, free: int, size_kb: int = 2048) -> Path:
    path = tmp_path / "meminfo"
    path.write_text(
        f"MemTotal:       24576000 kB\nHugePages_Total:   {total}\nHugePages_Free:    {free}\n"
        f"HugePages_Rsvd:        0\nHugepagesize:       {size_kb} kB\n"
    )
    return path


def test_hugepage_nodes_must_fit_in_the_hosts_free_hugepages(tmp_path):
    """Checked before anything is defined, against the pages the nodes still to start will take;
    the message gives the sysctl that reserves what is missing."""
    lab = make_lab(tmp_path, llm_node={"hugepages": True, "memory_mb": 2048})
    messages: list[str] = []
    with pytest.raises(LabError) as info:
        provider.hugepages_preflight(lab, lambda _spec: False, messages.append, meminfo(tmp_path, 1000, 600))
    assert str(info.value) == (
        f"{tmp_path / 'lab.yaml'}: nodes[2].hugepages: llm need 1024 hugepages of 2048 kB (2048 MiB) and this "
        "host has 600 free of 1000; reserve them first (sysctl vm.nr_hugepages=1424) or set hugepages: false"
    )
    provider.hugepages_preflight(lab, lambda _spec: False, messages.append, meminfo(tmp_path, 1024, 1024))
    assert messages == ["llm: 1024 of the host's 1024 free hugepages (2048 kB) will back their memory"]
    provider.hugepages_preflight(lab, lambda _spec: True, messages.append, meminfo(tmp_path, 0, 0))  # running
    assert len(messages) == 1
    gib_pages = meminfo(tmp_path, 2, 2, size_kb=1048576)
    provider.hugepages_preflight(lab, lambda _spec: False, messages.append, gib_pages)
    assert messages[-1] == "llm: 2 of the host's 2 free hugepages (1048576 kB) will back their memory"
