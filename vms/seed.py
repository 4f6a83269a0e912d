"""cloud-init NoCloud seeds: hostname, login user and key, pinned host key, static address.

Both providers use the same seed: nspawn drops it into /var/lib/cloud/seed/nocloud of the
node's root, libvirt attaches it as a `cidata` disk. A seed holds the node's SSH host private
key, so its files are written for their owner's eyes only (0600, root as the providers run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from lab.config import LabConfig, NodeSpec
from lab.keys import KeyPair, write_private


@dataclass(frozen=True)
class Seed:
    meta_data: str
    user_data: str
    network_config: str

    def files(self) -> dict[str, str]:
        return {"meta-data": self.meta_data, "user-data": self.user_data, "network-config": self.network_config}

    def write(self, directory: Path) -> None:
        """The seed's files in `directory` (made 0700), each 0600."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        for filename, text in self.files().items():
            write_private(directory / filename, text)


def make_seed(lab: LabConfig, node: NodeSpec, login: KeyPair, host_key: KeyPair, interface: dict[str, object]) -> Seed:
    """`interface` is the netplan v2 entry that names the lab NIC: {"id": "host0"} in a container;
    a VM may add "match" (e.g. {"macaddress": ...}) and "set-name"."""
    meta = {
        "instance-id": f"{lab.name}-{node.name}-{host_key.public_key.split()[1][-12:]}",
        "local-hostname": node.name,
    }
    user = {
        "hostname": node.name,
        "locale": False,
        "manage_etc_hosts": True,
        "disable_root": True,
        "ssh_pwauth": False,
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {
            "ed25519_private": host_key.private.read_text(),
            "ed25519_public": host_key.public_key,
        },
        "users": [
            {
                "name": lab.ssh_user,
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
                "ssh_authorized_keys": [login.public_key],
            }
        ],
    }
    prefix = lab.network.subnet.prefixlen
    entry = {k: v for k, v in interface.items() if k != "id"}
    entry["addresses"] = [f"{node.address}/{prefix}"]
    if lab.network.nat:  # out through the host, names from libvirt's DNS there (no resolved in the image)
        gateway = str(lab.network.host_address)
        entry["routes"] = [{"to": "0.0.0.0/0", "via": gateway}]
        user["write_files"] = [
            {"path": "/etc/resolv.conf", "content": f"nameserver {gateway}\n", "permissions": "0644"}
        ]
    network = {"version": 2, "ethernets": {interface["id"]: entry}}
    return Seed(
        meta_data=yaml.safe_dump(meta, sort_keys=False),
        user_data="#cloud-config\n" + yaml.safe_dump(user, sort_keys=False),
        network_config=yaml.safe_dump(network, sort_keys=False),
    )
