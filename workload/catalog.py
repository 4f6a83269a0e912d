"""The workload catalog: every service (port, role, placement, builder, peers, needs) and every
workload's entry, read from the topology files in workload/topologies/. Ports, start order, peers,
the driver's entries and the scenarios' choices derive from it here; the deploy reads the same files
(inventory/group_vars/all.yml)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

TOPOLOGIES = Path(__file__).with_name("topologies")

Group = Literal["agents", "tools", "llm"]
GROUPS: tuple[str, ...] = get_args(Group)
"""The inventory groups a service is placed in: those of lab.yaml's nodes (lab/config.py), every one
of which a lab has, so a placement always finds its node."""


class CatalogError(ValueError):
    """A topology file that cannot be used; the message names the file, the field and the fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceSpec(_Model):
    port: int = Field(ge=1024, le=65535)
    path: str = Field("", pattern=r"^(/[A-Za-z0-9._~-]+)*$")
    role: Literal["agents", "mcp_tools", "baseline"]
    group: Group
    """The inventory group whose node (`pick`: its first or last) runs it."""
    pick: Literal["first", "last"] = "first"
    builder: str = Field(pattern=r"^[a-z_][a-z0-9_.]*:[a-z_][a-z0-9_]*$")
    calls: tuple[str, ...] = ()
    needs: tuple[Literal["db", "llm"], ...] = ()
    agent: bool = False


class WorkloadSpec(_Model):
    entry: str
    agents: int = Field(0, ge=0, le=64)
    """How many agents' loops one task may run (0: no agent, no LLM)."""


class _Topology(_Model):
    services: dict[str, ServiceSpec] = Field(min_length=1)
    workloads: dict[str, WorkloadSpec] = Field(default_factory=dict)


@dataclass(frozen=True)
class Catalog:
    services: dict[str, ServiceSpec]
    """In start order: every service's callees come before it."""
    workloads: dict[str, WorkloadSpec]

    def needing(self, need: str) -> tuple[str, ...]:
        return tuple(name for name, spec in self.services.items() if need in spec.needs)

    @property
    def agents(self) -> tuple[str, ...]:
        return tuple(name for name, spec in self.services.items() if spec.agent)


def read(directory: Path = TOPOLOGIES) -> Catalog:
    """Every `*.yaml` in `directory`, merged and checked; CatalogError names the file and what is wrong."""
    services: dict[str, ServiceSpec] = {}
    workloads: dict[str, WorkloadSpec] = {}
    defined_in: dict[str, Path] = {}
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise CatalogError(
            f"no topology files (*.yaml) in {directory}: restore workload/topologies/ from the repository"
        )
    for path in files:
        topology = _parse(path)
        _merge(path, "services", topology.services, services, defined_in)
        _merge(path, "workloads", topology.workloads, workloads, defined_in)
        _check_calls(path, topology.services, services)
    _check_ports(services, defined_in)
    for name, spec in workloads.items():
        if spec.entry not in services:
            raise CatalogError(
                f"{defined_in[f'workloads.{name}']}: workloads.{name}.entry {spec.entry!r} is no service"
            )
    return Catalog(services, workloads)


def _merge(path: Path, kind: str, found: dict, merged: dict, defined_in: dict[str, Path]) -> None:
    for name, spec in found.items():
        key = f"{kind}.{name}"
        if key in defined_in:
            raise CatalogError(f"{path}: {key} is also defined in {defined_in[key]}; rename one")
        merged[name], defined_in[key] = spec, path


def _check_ports(services: dict[str, ServiceSpec], defined_in: dict[str, Path]) -> None:
    """No two services share a port: two of them on one node could not both listen."""
    ports: dict[int, str] = {}
    for name, spec in services.items():
        if spec.port in ports:
            raise CatalogError(
                f"{defined_in[f'services.{name}']}: services.{name}.port {spec.port} is {ports[spec.port]}'s too; "
                "give it a port of its own"
            )
        ports[spec.port] = name


def _parse(path: Path) -> _Topology:
    try:
        return _Topology.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except yaml.YAMLError as exc:
        raise CatalogError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from exc
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"]) or "(root)"
        raise CatalogError(f"{path}: field {field}: {error['msg']}") from exc


def _check_calls(path: Path, own: dict[str, ServiceSpec], known: dict[str, ServiceSpec]) -> None:
    """A service calls only services listed before it (so the file's order is a start order)."""
    names = list(known)
    for name in own:
        for callee in own[name].calls:
            if callee not in known:
                raise CatalogError(f"{path}: services.{name}.calls names {callee!r}, which no topology defines")
            if names.index(callee) > names.index(name):
                raise CatalogError(
                    f"{path}: services.{name}.calls {callee!r}, listed after it; list callees first (start order)"
                )


CATALOG = read()
