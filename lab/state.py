"""`.lab/state.json`: what `lab up` made, so every later command knows the nodes without asking the provider."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lab.config import LabConfig
from lab.errors import LabError
from vms.base import Node


@dataclass
class LabState:
    lab: str
    provider: str
    accelerator: str
    reason: str
    """Why this provider and accelerator were chosen, in words."""
    image: str
    nodes: list[Node] = field(default_factory=list)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise LabError(f"no node named '{name}' in this lab; nodes are {', '.join(n.name for n in self.nodes)}")


def state_file(lab: LabConfig) -> Path:
    return lab.state_dir / "state.json"


def save(lab: LabConfig, state: LabState) -> None:
    path = state_file(lab)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = asdict(state)
    for node in data["nodes"]:
        node["key_path"] = str(node["key_path"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def load(lab: LabConfig) -> LabState | None:
    path = state_file(lab)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        nodes = [
            Node(**{**n, "key_path": Path(n["key_path"]), "groups": tuple(n["groups"])}) for n in data.pop("nodes")
        ]
        return LabState(**data, nodes=nodes)
    except (ValueError, TypeError, KeyError) as exc:
        raise LabError(f"{path} is unreadable ({exc}); run `lab teardown` and `lab up` again") from None


# Host-wide: containers, bridges, libvirt networks and domains are named after the lab's `name`,
# so two lab directories with one name would stop and remove each other's nodes.
NAMES_DIR = Path("/var/lib/agentic-lab/names")


class NameTaken(LabError):
    """Another lab directory on this host holds the lab's name."""


def name_holder(lab: LabConfig) -> Path | None:
    """The state directory of another lab on this host that holds `lab.name`, if it still exists
    (`lab teardown` gives a name back; a holder whose directory was deleted holds nothing)."""
    try:
        holder = Path((NAMES_DIR / lab.name).read_text().strip())
    except FileNotFoundError:
        return None
    return holder if holder != lab.state_dir and holder.is_dir() else None


def claim_name(lab: LabConfig) -> None:
    """Record on the host that `lab.name` belongs to this lab directory; NameTaken if another holds it."""
    if (holder := name_holder(lab)) is not None:
        raise NameTaken(
            f"{lab.path}: the lab name '{lab.name}' is held by the lab in {holder.parent} (its nodes, bridge and "
            f"network are named after it, so two labs cannot share it); set another `name:` in {lab.path.name}, "
            f"or run `lab teardown` in {holder.parent} first"
        )
    NAMES_DIR.mkdir(parents=True, exist_ok=True)
    tmp = NAMES_DIR / f".{lab.name}.{os.getpid()}"
    tmp.write_text(f"{lab.state_dir}\n")
    os.replace(tmp, NAMES_DIR / lab.name)


def release_name(lab: LabConfig) -> None:
    """Give the name back, if this lab holds it."""
    path = NAMES_DIR / lab.name
    try:
        if Path(path.read_text().strip()) == lab.state_dir:
            path.unlink()
    except FileNotFoundError:
        pass


def require(lab: LabConfig) -> LabState:
    state = load(lab)
    if state is None:
        raise LabError(f"the lab is not up (no {state_file(lab)}); run `lab up` first")
    return state
