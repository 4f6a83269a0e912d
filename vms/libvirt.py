"""The libvirt provider: each node a VM defined with libvirt-python, KVM where usable, TCG otherwise.

On every libvirt host the lab uses (each node's `libvirt_uri`) it makes one isolated network
`<lab>-net`, one dir storage pool `<lab>-pool` holding the base volume (the node image disk),
its kernel and initrd, and per node a qcow2 overlay and a cloud-init NoCloud seed volume,
then one domain `<lab>-<node>` per node. Files reach the pool through libvirt's volume upload
(sparse streams), so a remote host (`qemu+ssh://host/system`) needs nothing but libvirtd.
Multi-host is planned, not finished: each host gets its own isolated network, so nodes on
different hosts do not reach each other and the controller reaches only the local ones.
"""

from __future__ import annotations

import errno
import grp
import hashlib
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Interface
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import libvirt

from lab import ssh
from lab.config import LabConfig, NodeSpec
from lab.errors import LabError
from lab.keys import KeyPair
from vms import image, sysfs_copy, timeserver, vfio
from vms.accel import kvm_usable
from vms.base import (
    Node,
    NodeStatus,
    Progress,
    Removed,
    Undo,
    login_key,
    make_node,
)
from vms.domain import (
    METADATA_NS,
    Accelerator,
    DomainSpec,
    domain_xml,
    network_xml,
    pool_xml,
    volume_xml,
)
from vms.seed import Seed, make_seed

POOL_ROOT = "/var/lib/libvirt/images"
"""Where each host keeps the lab's pool: a directory qemu may read under libvirt's default confinement."""
DNSMASQ_STATE = Path("/var/lib/libvirt/dnsmasq")
"""libvirt writes each network's MAC list here but creates it only when it runs dnsmasq, which a
network without DHCP and DNS does not; without it no domain can start on the network."""
KERNEL_CMDLINE = "root=LABEL=labroot rw console=ttyS0"
VLLM_MIN_MEMORY_MB = 16384
"""Below this vLLM cannot load a 7-8B model's weights through host memory."""
KVM_DEVICE = Path("/dev/kvm")
SYSTEMD = Path("/run/systemd/system")
DAEMONS = (("virtlogd", Path("/run/libvirt/virtlogd-sock")), ("libvirtd", Path("/run/libvirt/libvirt-sock")))
GONE = (
    libvirt.VIR_ERR_NO_DOMAIN,
    libvirt.VIR_ERR_NO_NETWORK,
    libvirt.VIR_ERR_NO_STORAGE_POOL,
    libvirt.VIR_ERR_NO_STORAGE_VOL,
)
UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
    | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
    | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
)

# libvirt prints every error to stderr by default; ours are raised as exceptions and reported once.
libvirt.registerErrorHandler(lambda _ctx, _error: None, None)


def domain_name(lab: LabConfig, spec: NodeSpec) -> str:
    return f"{lab.name}-{spec.name}"


def network_name(lab: LabConfig) -> str:
    return f"{lab.name}-net"


def bridge_name(lab: LabConfig) -> str:
    """Not `<lab>-br`: that is the nspawn provider's bridge, and both may exist on one host."""
    return f"{lab.name}-vbr"


def pool_name(lab: LabConfig) -> str:
    return f"{lab.name}-pool"


def pool_path(lab: LabConfig) -> str:
    return f"{POOL_ROOT}/{lab.name}"


def mac_address(lab: LabConfig, spec: NodeSpec) -> str:
    """Stable per lab and node (QEMU's 52:54:00 prefix), so the seed can match the NIC by it."""
    digest = hashlib.sha256(f"{lab.name}/{spec.name}".encode()).hexdigest()
    return "52:54:00:" + ":".join(digest[i : i + 2] for i in (0, 2, 4))


def is_local(uri: str) -> bool:
    return urlparse(uri).hostname is None


def console_log(lab: LabConfig, spec: NodeSpec) -> str:
    """virtlogd writes the serial console here; kept after a failed `up`, removed by teardown."""
    if is_local(spec.libvirt_uri):
        return str(lab.state_dir / "logs" / f"{spec.name}.console.log")
    return f"/var/log/libvirt/qemu/{domain_name(lab, spec)}.console.log"


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def ensure_daemons() -> list[str]:
    """Start virtlogd and libvirtd where they are not running and there is no systemd; the ones started."""
    missing = [(daemon, sock) for daemon, sock in DAEMONS if not _listening(sock)]
    if not missing:
        return []
    names = " and ".join(daemon for daemon, _ in missing)
    if SYSTEMD.is_dir():
        raise LabError(f"{names} not running; run `sudo systemctl enable --now {' '.join(d for d, _ in missing)}`")
    if os.geteuid() != 0:
        commands = " && ".join(f"{daemon} -d" for daemon, _ in missing)
        raise LabError(f"{names} not running and this host has no systemd; run `sudo sh -c '{commands}'`")
    for daemon, sock in missing:
        if shutil.which(daemon) is None:
            raise LabError(f"{daemon} is not installed; run `apt-get install libvirt-daemon-system qemu-system-x86`")
        # its own stdio, not ours: a daemon holding our pipes would keep a caller waiting for EOF
        subprocess.run(
            [daemon, "-d"], check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while not _listening(sock):
            if time.monotonic() > deadline:
                raise LabError(
                    f"`{daemon} -d` started but {sock} does not answer; "
                    f"see /var/log/libvirt/ and run `{daemon} -v` to see why"
                )
            time.sleep(0.1)
    return [daemon for daemon, _ in missing]


def fix_kvm_device() -> bool:
    """Give /dev/kvm the kvm group and mode 0660, as Debian's udev rule does where udev runs.

    With a root-only /dev/kvm, libvirt 9.0 finds on every API call that its cached QEMU
    capabilities (probed with KVM) disagree with what the qemu user may open, and probes QEMU
    again: about 4 s per call. True when it changed the device.
    """
    if os.geteuid() != 0 or not KVM_DEVICE.exists():
        return False
    try:
        kvm = grp.getgrnam("kvm").gr_gid
    except KeyError:
        return False
    mode = KVM_DEVICE.stat()
    if mode.st_gid == kvm and mode.st_mode & 0o060 == 0o060:
        return False
    os.chown(KVM_DEVICE, -1, kvm)
    KVM_DEVICE.chmod(0o660)
    return True


def connect(uri: str, progress: Progress) -> libvirt.virConnect:
    """A connection to `uri`; on a local host without systemd, first do what systemd and udev would."""
    started: list[str] = []
    if is_local(uri):
        if not SYSTEMD.is_dir() and fix_kvm_device():
            progress("gave /dev/kvm group kvm, mode 0660 (no udev here), so libvirt keeps its QEMU probe")
        started = ensure_daemons()
        for daemon in started:
            progress(f"started {daemon} (no systemd on this host)")
    try:
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        if "libvirtd" in started and not _listening(dict(DAEMONS)["libvirtd"]):
            # seen here: libvirt 9.0 segfaults on the status file of a network that was active when the host stopped
            raise LabError(
                f"libvirtd, started just now, exited ({exc.get_error_message()}); run `libvirtd -v` to see why. "
                "If it dies while loading networks, /run/libvirt/network/*.xml is status left from before a "
                "restart: move it aside and run again"
            ) from None
        raise LabError(
            f"cannot connect to libvirt at {uri} ({exc.get_error_message()}); "
            "check libvirt_uri in lab.yaml and that libvirtd runs there"
        ) from None


def choose_accelerator(lab: LabConfig, uri: str, conn: libvirt.virConnect) -> tuple[Accelerator, str]:
    """kvm or tcg for the VMs on `uri`, and why; lab.yaml may force either."""
    if lab.accelerator == "tcg":
        return "tcg", f"{lab.path.name} says accelerator: tcg"
    usable, why = kvm_usable() if is_local(uri) else _remote_kvm(uri, conn)
    if usable:
        return "kvm", why
    if lab.accelerator == "kvm":
        raise LabError(
            f"{lab.path}: accelerator: kvm, but {why}; set accelerator: auto or tcg to emulate the CPU instead"
        )
    return "tcg", why


def _remote_kvm(uri: str, conn: libvirt.virConnect) -> tuple[bool, str]:
    try:
        conn.getDomainCapabilities(None, "x86_64", None, "kvm")
    except libvirt.libvirtError as exc:
        return False, f"{uri} offers no KVM ({exc.get_error_message()})"
    return True, f"{uri} offers KVM"


def refuse_emulated_gpus(lab: LabConfig, hosts: dict[str, LabHost]) -> None:
    """A GPU is passed through only to a VM that KVM runs: under TCG the guest could not drive it."""
    for index, spec in enumerate(lab.nodes):
        host = hosts[spec.libvirt_uri]
        if spec.gpu is not None and host.accelerator == "tcg":
            raise LabError(
                f"{lab.path.name}: nodes[{index}].gpu ({', '.join(spec.gpu.pci)}): {host.uri} would emulate "
                f"{spec.name} with TCG ({host.why}), and a passed-through GPU needs KVM; use a host with KVM "
                "(vmx/svm and /dev/kvm), or remove the gpu entry to run the LLM on the CPU"
            )


def gpu_preflight(lab: LabConfig, progress: Progress, sysfs: Path = Path("/sys")) -> dict[str, tuple[str, ...]]:
    """The PCI functions each node gets, checked on sysfs before anything is defined."""
    hostdevs: dict[str, tuple[str, ...]] = {}
    for index, spec in enumerate(lab.nodes):
        if spec.gpu is None:
            continue
        local = is_local(spec.libvirt_uri)
        remote = None if local else sysfs_copy.ssh_argv(spec.libvirt_uri)
        if not local and remote is None:
            progress(
                f"{spec.name}: GPU preflight skipped on {spec.libvirt_uri} (no command runs over that transport; "
                "qemu+ssh:// would let it read the host's sysfs); libvirt checks the device when the VM starts"
            )
            hostdevs[spec.name] = tuple(spec.gpu.pci)
            continue
        try:
            if remote is None:
                hostdevs[spec.name] = tuple(vfio.preflight(spec.gpu.pci, sysfs))
            else:
                hostdevs[spec.name] = tuple(_remote_vfio_preflight(spec.gpu.pci, remote))
        except vfio.VfioError as exc:
            where = "" if remote is None else f" (on {spec.libvirt_uri})"
            raise vfio.VfioError(f"{lab.path}: nodes[{index}].gpu.pci{where}: {exc}") from None
        except sysfs_copy.RemoteSysfsError as exc:
            raise LabError(f"{lab.path}: nodes[{index}].gpu.pci: preflight on {spec.libvirt_uri}: {exc}") from None
        extra = sorted(set(hostdevs[spec.name]) - set(spec.gpu.pci))
        progress(
            f"{spec.name}: GPU {', '.join(spec.gpu.pci)} passes the VFIO preflight"
            + (f" (with {', '.join(extra)} from its IOMMU group)" if extra else "")
        )
    return hostdevs


def _remote_vfio_preflight(addresses: list[str], remote: list[str]) -> list[str]:
    """vfio.preflight on a copy of the remote host's sysfs (`remote`: the ssh command that reaches it),
    loading vfio-pci there if needed."""
    with tempfile.TemporaryDirectory(prefix="lab-sysfs-") as directory:
        copied = sysfs_copy.copy(remote, addresses, Path(directory))
        return vfio.preflight(addresses, copied, load_module=lambda: sysfs_copy.load_vfio(remote))


def hugepages_preflight(
    lab: LabConfig, running: Callable[[NodeSpec], bool], progress: Progress, meminfo: Path = Path("/proc/meminfo")
) -> None:
    """The nodes with `hugepages` that this up will start fit in the host's free hugepages (of
    its default size, which `<hugepages/>` asks for); QEMU would fail to start them otherwise."""
    wanted = [(i, s) for i, s in enumerate(lab.nodes) if s.hugepages and not running(s)]
    remote = [s.name for _, s in wanted if not is_local(s.libvirt_uri)]
    if remote:
        progress(f"{', '.join(remote)}: hugepages not checked on their remote hosts; libvirt checks when the VM starts")
    local = [(i, s) for i, s in wanted if is_local(s.libvirt_uri)]
    if not local:
        return
    names = ", ".join(s.name for _, s in local)
    fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
    size_kb = int(fields["Hugepagesize"].split()[0])
    total, free = int(fields["HugePages_Total"]), int(fields["HugePages_Free"])
    need = sum(-(-s.memory_mb * 1024 // size_kb) for _, s in local)
    if need > free:
        index = local[0][0]
        raise LabError(
            f"{lab.path}: nodes[{index}].hugepages: {names} need {need} hugepages of {size_kb} kB "
            f"({need * size_kb // 1024} MiB) and this host has {free} free of {total}; reserve them first "
            f"(sysctl vm.nr_hugepages={total - free + need}) or set hugepages: false"
        )
    progress(f"{names}: {need} of the host's {free} free hugepages ({size_kb} kB) will back their memory")


@dataclass(frozen=True)
class Upload:
    """A local file that becomes a volume in the lab's pool on every host."""

    name: str
    path: Path
    fmt: Literal["raw", "qcow2"]
    capacity: int
    """The virtual size in bytes (a qcow2 file's own header says it)."""


@dataclass(frozen=True)
class BootMedia:
    base: Upload
    kernel: Upload | None
    initrd: Upload | None
    """None for a user's cloud image, which boots with its own bootloader."""


def boot_media(lab: LabConfig, progress: Progress) -> BootMedia:
    if lab.image.file is not None:
        path = lab.image.file if lab.image.file.is_absolute() else lab.path.parent / lab.image.file
        fmt, capacity = _image_format(path)
        stat = path.stat()
        tag = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return BootMedia(Upload(f"{lab.name}-base-{tag}.{fmt}", path, fmt, capacity), None, None)
    node_image, built = image.build(lab.image, log=progress)
    if built:
        progress(f"node image {node_image.hash} built")
    disk = image.disk_image(node_image)
    tag = node_image.hash

    def raw(name: str, path: Path) -> Upload:
        return Upload(name, path, "raw", path.stat().st_size)

    return BootMedia(
        raw(f"{lab.name}-base-{tag}.raw", disk),
        raw(f"{lab.name}-vmlinuz-{tag}", node_image.kernel),
        raw(f"{lab.name}-initrd-{tag}", node_image.initrd),
    )


def _image_format(path: Path) -> tuple[Literal["raw", "qcow2"], int]:
    with path.open("rb") as handle:
        header = handle.read(32)
    if header[:4] == b"QFI\xfb":
        return "qcow2", struct.unpack(">Q", header[24:32])[0]
    return "raw", path.stat().st_size


def seed_iso(seed: Seed, directory: Path) -> Path:
    """The NoCloud `cidata` ISO (genisoimage: the one tool cloud-init's docs name for it)."""
    if shutil.which("genisoimage") is None:
        raise LabError("`genisoimage` is not installed; run `apt-get install genisoimage`")
    seed.write(directory)
    iso = directory / "seed.iso"
    result = subprocess.run(
        ["genisoimage", "-quiet", "-output", str(iso), "-volid", "cidata", "-joliet", "-rock", *seed.files()],
        check=False,
        cwd=directory,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise LabError(f"genisoimage could not make the cloud-init seed: {result.stderr.strip()}")
    return iso


def _already_gone(exc: Exception) -> bool:
    return isinstance(exc, libvirt.libvirtError) and exc.get_error_code() in GONE


def _lookup(lookup: Callable[[str], Any], name: str) -> Any:
    """The named libvirt object, or None when there is none."""
    try:
        return lookup(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in GONE:
            return None
        raise


def _active(conn: libvirt.virConnect, name: str) -> bool:
    dom = _lookup(conn.lookupByName, name)
    return dom is not None and bool(dom.isActive())


def _upload(conn: libvirt.virConnect, vol: libvirt.virStorageVol, path: Path) -> None:
    """Send the file into the volume as a sparse stream: holes are skipped, not sent as zeros."""
    stream = conn.newStream(0)
    vol.upload(stream, 0, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)
    fd = os.open(path, os.O_RDONLY)
    try:
        stream.sparseSendAll(
            lambda _s, nbytes, handle: os.read(handle, nbytes),
            _hole,
            lambda _s, length, handle: os.lseek(handle, length, os.SEEK_CUR),
            fd,
        )
        stream.finish()
    except BaseException:
        stream.abort()
        raise
    finally:
        os.close(fd)


def _hole(_stream: libvirt.virStream, fd: int) -> tuple[bool, int]:
    """(in data, length of the section from the current offset), as sparseSendAll asks."""
    here = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        data = os.lseek(fd, here, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno != errno.ENXIO:
            raise
        data = -1  # a trailing hole
    if data < 0:
        section = (False, os.lseek(fd, 0, os.SEEK_END) - here)
    elif data > here:
        section = (False, data - here)
    else:
        section = (True, os.lseek(fd, data, os.SEEK_HOLE) - data)
    os.lseek(fd, here, os.SEEK_SET)
    return section


class LabHost:
    """One libvirt host of the lab: its connection and the lab's network and pool there."""

    pool: libvirt.virStoragePool
    """Set by `prepare`."""

    def __init__(self, lab: LabConfig, uri: str, progress: Progress):
        self.lab, self.uri = lab, uri
        self.conn = connect(uri, progress)
        self.accelerator, self.why = choose_accelerator(lab, uri, self.conn)

    def prepare(self, media: BootMedia, undo: Undo, progress: Progress) -> None:
        self._network(undo)
        self.pool = self._pool(undo)
        for upload in (media.base, media.kernel, media.initrd):
            if upload is not None and _lookup(self.pool.storageVolLookupByName, upload.name) is None:
                progress(f"uploading {upload.path.name} into pool {pool_name(self.lab)} as {upload.name}")
                self.upload(upload, undo)

    def _network(self, undo: Undo) -> None:
        lab = self.lab
        gateway = IPv4Interface(f"{lab.network.host_address}/{lab.network.subnet.prefixlen}")
        network = _lookup(self.conn.networkLookupByName, network_name(lab))
        if is_local(self.uri):
            DNSMASQ_STATE.mkdir(parents=True, exist_ok=True)
        if network is None:
            xml = network_xml(network_name(lab), bridge_name(lab), gateway, lab.network.nat)
            network = self.conn.networkDefineXML(xml)
            undo.push(f"network {network_name(lab)}", lambda: remove_network(network))
        else:
            defined = ET.fromstring(network.XMLDesc(0))
            ip = defined.find("ip")
            found = f"{ip.get('address')}/{ip.get('prefix')}" if ip is not None else "no address"
            if found != str(gateway):
                raise LabError(
                    f"network {network_name(lab)} exists with {found} but {lab.path.name} says {gateway}; "
                    "run `lab teardown` first to change the subnet"
                )
            forward = defined.find("forward")
            if (forward is not None and forward.get("mode") == "nat") != lab.network.nat:
                raise LabError(
                    f"network {network_name(lab)} exists {'without' if lab.network.nat else 'with'} NAT but "
                    f"{lab.path.name} says network.nat: {str(lab.network.nat).lower()}; run `lab teardown` first "
                    "to change it (the nodes' routes are set at their first boot)"
                )
        if not network.isActive():
            network.create()

    def _pool(self, undo: Undo) -> libvirt.virStoragePool:
        pool = _lookup(self.conn.storagePoolLookupByName, pool_name(self.lab))
        if pool is None:
            pool = self.conn.storagePoolDefineXML(pool_xml(pool_name(self.lab), pool_path(self.lab)))
            undo.push(f"storage pool {pool_name(self.lab)}", lambda: remove_pool(pool))
            pool.build(0)
        if not pool.isActive():
            pool.create()
        pool.refresh(0)
        return pool

    def upload(self, upload: Upload, undo: Undo) -> None:
        self.volume(volume_xml(upload.name, upload.capacity, upload.fmt), upload.name, undo)
        _upload(self.conn, self.pool.storageVolLookupByName(upload.name), upload.path)

    def volume(self, xml: str, name: str, undo: Undo) -> None:
        """Create the volume, replacing one left by a node that no longer exists."""
        stale = _lookup(self.pool.storageVolLookupByName, name)
        if stale is not None:
            stale.delete(0)
        vol = self.pool.createXML(xml, 0)
        undo.push(f"volume {name}", lambda: vol.delete(0))


def remove_domain(dom: libvirt.virDomain) -> None:
    if dom.isActive():
        dom.destroy()
    dom.undefineFlags(UNDEFINE_FLAGS)


def remove_network(network: libvirt.virNetwork) -> None:
    if network.isActive():
        network.destroy()
    network.undefine()


def remove_pool(pool: libvirt.virStoragePool, removed: Removed | None = None) -> None:
    """Its volumes, the pool's directory and the pool itself."""
    if not pool.isActive():
        pool.create()
    pool.refresh(0)
    for vol in pool.listAllVolumes(0):
        name = vol.name()
        vol.delete(0)
        if removed is not None:
            removed.add(f"volume {name}")
    pool.destroy()
    pool.delete(0)
    pool.undefine()


def stored_spec(dom: libvirt.virDomain) -> DomainSpec | None:
    """The spec the lab stored in the domain, or None for a domain the lab did not make."""
    try:
        element = ET.fromstring(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0))
    except libvirt.libvirtError:
        return None
    return DomainSpec.from_json(element.text or "{}")


def lab_domains(conn: libvirt.virConnect, lab: LabConfig) -> list[libvirt.virDomain]:
    """Every domain this lab defined on the host, including nodes since dropped from lab.yaml."""
    return [dom for dom in conn.listAllDomains(0) if (spec := stored_spec(dom)) is not None and spec.lab == lab.name]


class LibvirtProvider:
    name = "libvirt"

    def up(self, lab: LabConfig, progress: Progress) -> list[Node]:
        hosts = {uri: LabHost(lab, uri, progress) for uri in dict.fromkeys(spec.libvirt_uri for spec in lab.nodes)}
        refuse_emulated_gpus(lab, hosts)
        hostdevs = gpu_preflight(lab, progress)
        hugepages_preflight(lab, lambda spec: _active(hosts[spec.libvirt_uri].conn, domain_name(lab, spec)), progress)
        backend, why = lab.llm_backend
        progress(f"LLM backend: {backend} ({why})")
        llm = lab.llm_node
        if backend == "vllm" and llm.memory_mb < VLLM_MIN_MEMORY_MB:
            progress(
                f"warning: nodes[{lab.nodes.index(llm)}].memory_mb is {llm.memory_mb}; "
                f"vLLM needs at least {VLLM_MIN_MEMORY_MB} for a 7-8B model, raise it in {lab.path.name}"
            )
        for host in hosts.values():
            if host.accelerator == "tcg":
                progress(
                    f"warning: VMs on {host.uri} are emulated with TCG, several times slower than KVM, "
                    f"because {host.why}; runs record accelerator=tcg"
                )
        media = boot_media(lab, progress)
        login = login_key(lab)
        undo = Undo(gone=_already_gone)
        try:
            for host in hosts.values():
                host.prepare(media, undo, progress)
            if any(is_local(spec.libvirt_uri) for spec in lab.nodes) and timeserver.start(lab):
                undo.push("the lab's chronyd", lambda: timeserver.stop(lab))
                progress(f"NTP for the lab network: chronyd on {lab.network.host_address} serves this host's clock")
            booting = [
                self._node(
                    lab, spec, hosts[spec.libvirt_uri], media, login, hostdevs.get(spec.name, ()), undo, progress
                )
                for spec in lab.nodes
            ]
            domains = {node.name: dom for node, dom in booting}
            ssh.wait_all_ready(
                [node for node, _ in booting],
                lab.boot_timeout(any(h.accelerator == "tcg" for h in hosts.values())),
                lambda n: domains[n.name].isActive(),
                lambda n: Path(console_log(lab, lab.node(n.name))),
                "the VM stopped",
                progress,
            )
            return [node for node, _ in booting]
        except BaseException as exc:
            if isinstance(exc, libvirt.libvirtError):
                exc = LabError(f"libvirt refused: {exc.get_error_message()} (console logs: {lab.state_dir / 'logs'})")
            raise undo.failed(exc, progress) from None

    def _node(
        self,
        lab: LabConfig,
        spec: NodeSpec,
        host: LabHost,
        media: BootMedia,
        login: KeyPair,
        hostdevs: tuple[str, ...],
        undo: Undo,
        progress: Progress,
    ) -> tuple[Node, libvirt.virDomain]:
        node, host_key = make_node(lab, spec, login, self.name, host.accelerator)
        wanted = self._spec(lab, spec, host.accelerator, media, hostdevs)
        dom = _lookup(host.conn.lookupByName, wanted.name)
        if dom is None:
            dom = self._define(
                lab, spec, host, media, wanted, make_seed(lab, spec, login, host_key, self._interface(lab, spec)), undo
            )
            progress(f"{spec.name}: VM started ({host.accelerator}, {spec.vcpus} vCPU, {spec.memory_mb} MB)")
            return node, dom
        defined = stored_spec(dom)
        if defined is None:
            raise LabError(
                f"a libvirt domain named {wanted.name} exists on {host.uri} but this lab did not make it; "
                f"rename the lab in {lab.path.name} or remove that domain"
            )
        if changes := defined.changes(wanted):
            progress(
                f"warning: {spec.name}: lab.yaml changed since the VM was defined ({'; '.join(changes)}); "
                "it keeps its old definition until `lab teardown` and `lab up`"
            )
        node = replace(node, accelerator=defined.accelerator)
        if dom.isActive():
            progress(f"{spec.name}: already running")
        else:
            dom.create()
            progress(f"{spec.name}: was defined but stopped; started")
        return node, dom

    @staticmethod
    def _interface(lab: LabConfig, spec: NodeSpec) -> dict[str, object]:
        return {"id": "lab0", "match": {"macaddress": mac_address(lab, spec)}, "set-name": "lab0"}

    @staticmethod
    def _spec(
        lab: LabConfig, spec: NodeSpec, accelerator: Accelerator, media: BootMedia, hostdevs: tuple[str, ...]
    ) -> DomainSpec:
        def path(name: str) -> str:
            return f"{pool_path(lab)}/{name}"

        return DomainSpec(
            lab=lab.name,
            name=domain_name(lab, spec),
            accelerator=accelerator,
            vcpus=spec.vcpus,
            memory_mb=spec.memory_mb,
            image=media.base.name,
            disk=path(f"{domain_name(lab, spec)}.qcow2"),
            seed=path(f"{domain_name(lab, spec)}-seed.iso"),
            network=network_name(lab),
            mac=mac_address(lab, spec),
            console_log=console_log(lab, spec),
            kernel=path(media.kernel.name) if media.kernel else "",
            initrd=path(media.initrd.name) if media.initrd else "",
            cmdline=KERNEL_CMDLINE if media.kernel else "",
            hostdevs=hostdevs,
            hugepages=spec.hugepages,
            lock_memory=spec.lock_memory,
        )

    @staticmethod
    def _define(
        lab: LabConfig, spec: NodeSpec, host: LabHost, media: BootMedia, wanted: DomainSpec, seed: Seed, undo: Undo
    ) -> libvirt.virDomain:
        capacity = max(spec.disk_gb * 1024**3, media.base.capacity)
        overlay = Path(wanted.disk).name
        host.volume(
            volume_xml(overlay, capacity, "qcow2", (f"{pool_path(lab)}/{media.base.name}", media.base.fmt)),
            overlay,
            undo,
        )
        if is_local(spec.libvirt_uri):
            Path(wanted.console_log).parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"{wanted.name}-seed-") as work:
            iso = seed_iso(seed, Path(work))
            host.upload(Upload(Path(wanted.seed).name, iso, "raw", iso.stat().st_size), undo)
        dom = host.conn.defineXML(domain_xml(wanted))
        undo.push(f"domain {wanted.name}", lambda: remove_domain(dom))
        dom.create()
        return dom

    def status(self, lab: LabConfig) -> list[NodeStatus]:
        conns: dict[str, libvirt.virConnect | str] = {}
        for uri in dict.fromkeys(spec.libvirt_uri for spec in lab.nodes):
            try:
                conns[uri] = libvirt.open(uri)
            except libvirt.libvirtError as exc:
                conns[uri] = exc.get_error_message()
        return [self._status(lab, spec, conns[spec.libvirt_uri]) for spec in lab.nodes]

    def _status(self, lab: LabConfig, spec: NodeSpec, conn: libvirt.virConnect | str) -> NodeStatus:
        name = domain_name(lab, spec)
        if isinstance(conn, str):
            return NodeStatus(
                spec.name,
                self.name,
                "-",
                str(spec.address),
                "unknown",
                f"libvirt at {spec.libvirt_uri} unreachable: {conn}",
            )
        dom = _lookup(conn.lookupByName, name)
        defined = stored_spec(dom) if dom is not None else None
        if dom is None or defined is None:
            return NodeStatus(spec.name, self.name, "-", str(spec.address), "absent", f"domain {name}")
        return NodeStatus(
            spec.name,
            self.name,
            defined.accelerator,
            str(spec.address),
            "running" if dom.isActive() else "stopped",
            f"domain {name} on {spec.libvirt_uri}",
        )

    def down(self, lab: LabConfig, progress: Progress) -> Removed:
        removed = Removed()
        if timeserver.stop(lab):
            removed.add(f"chronyd serving NTP on {lab.network.host_address}")
        for uri in dict.fromkeys(spec.libvirt_uri for spec in lab.nodes):
            self._down_host(lab, connect(uri, progress), removed, progress)
        for spec in lab.nodes:
            log = Path(console_log(lab, spec))
            if is_local(spec.libvirt_uri) and log.is_file():
                log.unlink()
                removed.add(f"console log {log}")
            keys = lab.state_dir / "nodes" / spec.name
            if keys.is_dir():
                shutil.rmtree(keys)
                removed.add(f"node directory {keys} (its host key)")
        return removed

    @staticmethod
    def _down_host(lab: LabConfig, conn: libvirt.virConnect, removed: Removed, progress: Progress) -> None:
        for dom in lab_domains(conn, lab):
            name = dom.name()
            remove_domain(dom)
            removed.add(f"domain {name}")
            progress(f"removed domain {name}")
        pool = _lookup(conn.storagePoolLookupByName, pool_name(lab))
        if pool is not None:
            remove_pool(pool, removed)
            removed.add(f"storage pool {pool_name(lab)} ({pool_path(lab)})")
            progress(f"removed storage pool {pool_name(lab)} and its volumes")
        network = _lookup(conn.networkLookupByName, network_name(lab))
        if network is not None:
            remove_network(network)
            removed.add(f"network {network_name(lab)}")
            progress(f"removed network {network_name(lab)}")
