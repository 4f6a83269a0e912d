"""up / status / teardown: the provider does the work, this keeps state, inventory and keys in step."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import vms
from lab import inventory, ssh, state
from lab.config import LabConfig
from lab.errors import LabError
from lab.keys import ensure_secret
from lab.state import LabState
from vms import image
from vms.base import Progress, Removed


def up(lab: LabConfig, provider_override: str | None, progress: Progress) -> LabState:
    name, reason = vms.choose(lab, provider_override)
    existing = state.load(lab)
    if existing is not None and existing.provider != name:
        raise LabError(
            f"this lab is already up with the {existing.provider} provider; "
            f"run `lab teardown` before switching to {name}"
        )
    state.claim_name(lab)
    progress(f"provider: {name} ({reason})")
    try:
        nodes = vms.get(name).up(lab, progress)
    except BaseException:
        if not lab.state_dir.exists():  # refused before anything was made: the name stays free
            state.release_name(lab)
        raise
    node_image = image.load(lab.image)
    current = LabState(
        lab=lab.name,
        provider=name,
        accelerator=nodes[0].accelerator,
        reason=reason,
        image=node_image.hash if node_image else str(lab.image.file),
        nodes=nodes,
    )
    state.save(lab, current)
    inventory.write(
        lab,
        current,
        db_password=ensure_secret(inventory.db_password_file(lab)),
        api_token=ensure_secret(inventory.api_token_file(lab)),
    )
    return current


@dataclass
class NodeReport:
    name: str
    provider: str
    accelerator: str
    address: str
    state: str
    services: str


def status(lab: LabConfig) -> list[NodeReport]:
    current = state.load(lab)
    provider_name = current.provider if current else vms.choose(lab)[0]
    reports = []
    for node_status in vms.get(provider_name).status(lab):
        services = "-"
        if current is not None and node_status.state == "running":
            services = _services(current, node_status.name)
        accelerator = current.accelerator if current else node_status.accelerator
        reports.append(
            NodeReport(node_status.name, provider_name, accelerator, node_status.address, node_status.state, services)
        )
    return reports


def _services(current: LabState, name: str) -> str:
    """The node's lab services and whether each is active, in one SSH round trip."""
    try:
        code, out, _ = ssh.run(current.node(name), "systemctl list-units 'lab-*' --all --no-legend --plain", timeout=15)
    except ssh.SSH_ERRORS as exc:  # a node that does not answer is a status, not a failure of `lab status`
        return f"ssh: {type(exc).__name__}"
    if code != 0:
        return "ssh ok; systemctl failed"
    units = [line.split() for line in out.splitlines() if line.strip()]
    if not units:
        return "none yet (lab deploy)"
    return ", ".join(f"{u[0].removesuffix('.service')}={u[2]}" for u in units)


def teardown(lab: LabConfig, progress: Progress) -> Removed:
    """Remove what the lab made; without a state file, still sweep for leftovers of either provider."""
    if (holder := state.name_holder(lab)) is not None:
        raise state.NameTaken(
            f"{lab.path}: the lab name '{lab.name}' is held by the lab in {holder.parent}; teardown here would "
            f"remove that lab's nodes (they are found by name). Run `lab teardown` in {holder.parent}"
        )
    current = state.load(lab)
    if current is not None:
        names = [current.provider]
    elif lab.provider != "auto":
        names = [lab.provider]
    else:
        names = ["nspawn"] + (["libvirt"] if vms.LIBVIRT_SOCKET.exists() else [])
    removed, failed = Removed(), []
    for name in names:
        try:
            removed.items += vms.get(name).down(lab, progress).items
        except Exception as exc:  # noqa: BLE001 - said below with what was removed; the state stays for a retry
            failed.append(f"{name}: {exc if isinstance(exc, LabError) else f'{type(exc).__name__}: {exc}'}")
    if failed:
        done = f"; removed before that: {', '.join(removed.items)}" if removed.items else ""
        raise LabError(
            f"teardown incomplete ({'; '.join(failed)}){done}. The state files stay, so "
            f"`lab teardown` can try again once that is fixed"
        )
    for path in (inventory.inventory_file(lab), inventory.known_hosts_file(lab), state.state_file(lab)):
        if path.exists():
            path.unlink()
            removed.add(f"file {path}")
    for directory in ("ssh", "secrets", "logs", "nodes", "cp"):
        path = lab.state_dir / directory
        if path.exists():
            shutil.rmtree(path)
            removed.add(f"directory {path}")
    if lab.state_dir.is_dir() and not any(lab.state_dir.iterdir()):
        lab.state_dir.rmdir()
    state.release_name(lab)
    return removed
