"""The nspawn provider: each node a systemd-nspawn container booted from the node image.

A node's root is an overlay (the image below, the node's own upper layer above), so three
nodes share one image and start in seconds. Each container gets its own systemd, sshd,
network namespace (a veth `vb-<machine>` on the lab bridge, `host0` inside) and the
capabilities eBPF probes need. cloud-init configures it from the same NoCloud seed a VM gets.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from lab import ssh
from lab.config import LabConfig, NodeSpec
from lab.errors import LabError
from lab.keys import KeyPair
from vms import host, image
from vms.base import (
    Node,
    NodeStatus,
    Progress,
    Removed,
    Undo,
    login_key,
    make_node,
    state_path,
)
from vms.seed import make_seed

# Probes need bpf() and perf_event_open() and to read kernel memory; nspawn drops these by default.
CAPABILITIES = "CAP_SYS_ADMIN,CAP_BPF,CAP_PERFMON,CAP_NET_ADMIN,CAP_SYS_RESOURCE,CAP_SYS_PTRACE,CAP_IPC_LOCK"
SYSCALLS = "bpf perf_event_open"
SEED_DIR = "var/lib/cloud/seed/nocloud"
"""Where cloud-init finds a NoCloud seed in a node's root (the overlay copies it to the node's upper layer)."""


def bridge_name(lab: LabConfig) -> str:
    return f"{lab.name}-br"


def machine_name(lab: LabConfig, node: NodeSpec) -> str:
    return f"{lab.name}-{node.name}"  # _remove_node spells it from the name alone


def console_log(lab: LabConfig, spec: NodeSpec) -> Path:
    """Kept after a failed `up` (only teardown removes it), so the reason can be read."""
    return state_path(lab, "logs", f"{spec.name}.console.log")


class NspawnProvider:
    name = "nspawn"

    def up(self, lab: LabConfig, progress: Progress) -> list[Node]:
        for index, node in enumerate(lab.nodes):
            if node.gpu is not None:
                raise LabError(
                    f"{lab.path.name}: nodes[{index}].gpu ({', '.join(node.gpu.pci)}): containers share the host's "
                    "kernel and cannot take a passed-through GPU; remove the gpu entry, or run the lab as VMs on a "
                    "host with KVM and an IOMMU (--provider libvirt)"
                )
        if lab.network.nat:
            raise LabError(
                f"{lab.path.name}: network.nat: the nspawn provider has no NAT route (its containers reach only "
                "the lab bridge); remove network.nat and give llm.model as a directory on this host, or run the "
                "lab as VMs (--provider libvirt)"
            )
        host.require_root("the nspawn provider")
        if shutil.which("systemd-nspawn") is None:
            raise LabError("systemd-nspawn is not installed; run `apt-get install systemd-container`")
        if lab.image.file is not None:
            raise LabError(
                f"{lab.path.name}: image.file ({lab.image.file}) is a VM disk, which containers cannot boot; "
                "remove it or use --provider libvirt"
            )
        node_image, built = image.build(lab.image, log=progress)
        if built:
            progress(f"node image {node_image.hash} built")
        login = login_key(lab)
        undo = Undo()
        try:
            if host.ensure_bridge(bridge_name(lab), f"{lab.network.host_address}/{lab.network.subnet.prefixlen}"):
                undo.push(f"bridge {bridge_name(lab)}", lambda: host.delete_link(bridge_name(lab)))
            nodes = []
            for spec in lab.nodes:
                running = bool(self._pids(lab, spec))
                if not running:  # pushed before its overlay is mounted: a failure halfway is undone too
                    undo.push(
                        f"container {machine_name(lab, spec)}",
                        lambda name=spec.name: self._remove_node(lab, name, Removed(), lambda _msg: None),
                    )
                nodes.append(self._start(lab, spec, node_image, login, running))
                progress(f"{spec.name}: {'already running' if running else 'container started'}")
            ssh.wait_all_ready(
                nodes,
                lab.boot_timeout(emulated=False),
                lambda n: bool(self._pids(lab, lab.node(n.name))),
                lambda n: console_log(lab, lab.node(n.name)),
                "the container exited",
                progress,
            )
            return nodes
        except BaseException as exc:
            raise undo.failed(exc, progress) from None

    def _start(
        self, lab: LabConfig, spec: NodeSpec, node_image: image.NodeImage, login: KeyPair, running: bool
    ) -> Node:
        node, host_key = make_node(lab, spec, login, self.name, "container")
        if running:
            return node
        root = self._mount_root(lab, spec, node_image)
        make_seed(lab, spec, login, host_key, {"id": "host0"}).write(root / SEED_DIR)
        console = console_log(lab, spec)
        argv = [
            "systemd-nspawn",
            "--boot",
            "--register=no",
            "--keep-unit",
            "--console=read-only",
            f"--machine={machine_name(lab, spec)}",
            f"--directory={root}",
            f"--hostname={spec.name}",
            f"--network-bridge={bridge_name(lab)}",
            f"--capability={CAPABILITIES}",
            f"--system-call-filter={SYSCALLS}",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
        ]
        with console.open("ab") as log:
            subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return node

    def _mount_root(self, lab: LabConfig, spec: NodeSpec, node_image: image.NodeImage) -> Path:
        base = state_path(lab, "nodes", spec.name, "root").parent
        root, upper, work = base / "root", base / "upper", base / "work"
        for directory in (root, upper, work):
            directory.mkdir(exist_ok=True)
        if not host.is_mounted(root):
            host.run(
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={node_image.root},upperdir={upper},workdir={work}",
                str(root),
            )
        return root

    def _pids(self, lab: LabConfig, spec: NodeSpec) -> list[int]:
        return host.processes_with(f"--machine={machine_name(lab, spec)}")

    @staticmethod
    def _known(lab: LabConfig) -> list[str]:
        """The nodes in lab.yaml, and those that have a node directory but left lab.yaml while up."""
        nodes = lab.state_dir / "nodes"
        listed = [spec.name for spec in lab.nodes]
        return listed + (
            sorted(p.name for p in nodes.iterdir() if p.is_dir() and p.name not in listed) if nodes.is_dir() else []
        )

    def status(self, lab: LabConfig) -> list[NodeStatus]:
        return [
            NodeStatus(
                spec.name,
                self.name,
                "container",
                str(spec.address),
                "running" if self._pids(lab, spec) else "absent",
                f"machine {machine_name(lab, spec)}",
            )
            for spec in lab.nodes
        ]

    def down(self, lab: LabConfig, progress: Progress) -> Removed:
        removed = Removed()
        for name in self._known(lab):
            self._remove_node(lab, name, removed, progress)
        if host.delete_link(bridge_name(lab)):
            removed.add(f"bridge {bridge_name(lab)}")
            progress(f"removed bridge {bridge_name(lab)}")
        return removed

    def _remove_node(self, lab: LabConfig, name: str, removed: Removed, progress: Progress) -> None:
        machine = f"{lab.name}-{name}"
        for pid in host.processes_with(f"--machine={machine}"):
            killed = host.stop_process(pid, grace=15.0)
            removed.add(f"container {machine} (pid {pid}{', killed' if killed else ''})")
            progress(f"stopped container {machine}")
        # nspawn removes its veth when it exits; one left behind (nspawn killed) is ours to remove
        veth = f"vb-{machine}"
        if host.delete_link(veth):
            removed.add(f"veth {veth}")
        base = lab.state_dir / "nodes" / name
        root = base / "root"
        if host.is_mounted(root):
            self._unmount(root)
            removed.add(f"overlay mount {root}")
        if base.exists():
            shutil.rmtree(base)
            removed.add(f"node directory {base}")

    @staticmethod
    def _unmount(root: Path) -> None:
        for _ in range(50):
            if host.run("umount", str(root), check=False).returncode == 0:
                return
            time.sleep(0.1)  # the container's last processes may still hold the mount for a moment
        host.run("umount", "--lazy", str(root))
