"""The provider interface. Everything above it talks SSH to `Node`s and never asks who made them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lab.config import LabConfig, NodeSpec
from lab.errors import LabError
from lab.keys import KeyPair, ensure_keypair

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Node:
    name: str
    groups: tuple[str, ...]
    address: str
    ssh_user: str
    key_path: Path
    host_key: str
    """The node's public SSH host key line ("ssh-ed25519 AAAA..."), pinned before first boot."""
    provider: str
    accelerator: str
    """kvm, tcg or container: what the node's CPU really is, recorded with every run."""


@dataclass
class NodeStatus:
    name: str
    provider: str
    accelerator: str
    address: str
    state: str
    """running, stopped, absent, or a provider-specific word such as 'defined'."""
    detail: str = ""


@dataclass
class Removed:
    """What `down` removed, in the order it removed it, for the teardown report."""

    items: list[str] = field(default_factory=list)

    def add(self, what: str) -> None:
        self.items.append(what)


class Undo:
    """What an `up` created, removed in reverse order when it fails, so nothing is half-made.

    A step that fails does not stop the others, and is said, never swallowed: the error that made
    `up` fail stays the one raised, naming what undo could not remove."""

    def __init__(self, gone: Callable[[Exception], bool] = lambda _exc: False) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []
        self._gone = gone  # an error that only says the thing is gone already

    def push(self, what: str, step: Callable[[], object]) -> None:
        self._steps.append((what, step))

    def run(self, progress: Progress) -> list[str]:
        """Every step, the last first; what could not be removed, each with why."""
        left = []
        for what, step in reversed(self._steps):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - one step's failure must not keep the others from running
                if not self._gone(exc):
                    left.append(f"{what} ({type(exc).__name__}: {exc})")
                    progress(f"could not remove {left[-1]}")
        self._steps.clear()
        return left

    def failed(self, exc: BaseException, progress: Progress) -> BaseException:
        """Undo after `exc` made `up` fail; what to raise: `exc`, or a LabError that also names what is left."""
        progress("up failed; removing what this run created")
        left = self.run(progress)
        if left and isinstance(exc, LabError):
            return LabError(f"{exc}; undo could not remove {'; '.join(left)}: run `lab teardown`")
        return exc


class Provider(Protocol):
    name: str

    def up(self, lab: LabConfig, progress: Progress) -> list[Node]:
        """Create or start whatever is missing; leave what runs alone. Idempotent."""

    def status(self, lab: LabConfig) -> list[NodeStatus]: ...

    def down(self, lab: LabConfig, progress: Progress) -> Removed:
        """Remove everything this provider made for the lab. A second call removes nothing."""


def state_path(lab: LabConfig, *parts: str) -> Path:
    path = lab.state_dir.joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def login_key(lab: LabConfig) -> KeyPair:
    """The lab's own SSH login key (made once), the one every node's admin user accepts."""
    return ensure_keypair(state_path(lab, "ssh", "id_ed25519"), f"{lab.name}-login")


def make_node(lab: LabConfig, spec: NodeSpec, login: KeyPair, provider: str, accelerator: str) -> tuple[Node, KeyPair]:
    """The node as everything above the provider sees it, and its host key (made once, before first boot)."""
    host_key = ensure_keypair(state_path(lab, "nodes", spec.name, "ssh_host_ed25519_key"), spec.name)
    node = Node(
        name=spec.name,
        groups=tuple(spec.groups),
        address=str(spec.address),
        ssh_user=lab.ssh_user,
        key_path=login.private,
        host_key=host_key.public_key,
        provider=provider,
        accelerator=accelerator,
    )
    return node, host_key
