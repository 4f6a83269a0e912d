"""The workload catalog: every service (port, role, placement, builder, peers, needs) and every
workload's entry, read from the topology files in workload/topologies/. Ports, start order, peers,
the driver's entries and the scenarios' choices derive from it here; the deploy reads the same files
(inventory/group_vars/all.yml)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

TOPOLOGIES = Path(__file__).with_name("topologies")

Group = Literal["agents", "tools", "llm", "workers"]
GROUPS: tuple[str, ...] = get_args(Group)
"""The inventory groups a service is placed in: those of lab.yaml's nodes (lab/config.py)."""
REQUIRED_GROUPS: tuple[str, ...] = ("agents", "tools", "llm")
"""The groups every lab has nodes in (lab/config.py checks), so a service placed in one always finds its
node. A service placed in another group (workers) runs only in labs with nodes there, and so does every
service that calls it (Catalog.placeable)."""


class CatalogError(ValueError):
    """A topology file that cannot be used; the message names the file, the field and the fix."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServiceSpec(_Model):
    port: int = Field(ge=1024, le=65535)
    path: str = Field("", pattern=r"^(/[A-Za-z0-9._~-]+)*$")
    role: Literal["agents", "mcp_tools", "baseline"]
    group: Group
    """The inventory group whose node runs it: its first, its last, or each (`pick`)."""
    pick: Literal["first", "last", "each"] = "first"
    """each: one instance per node of the group, which callers address as `<service>@<node>`."""
    builder: str = Field(pattern=r"^[a-z_][a-z0-9_.]*:[a-z_][a-z0-9_]*$")
    calls: tuple[str, ...] = ()
    needs: tuple[Literal["db", "llm"], ...] = ()
    agent: bool = False


class WorkloadSpec(_Model):
    entry: str
    agents: int = Field(0, ge=0, le=64)
    """How many agents' loops deep one task may go, one after another (0: no agent, no LLM); agents
    working at once (fanout's workers) count once."""


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

    def named(self, service: str, node: str) -> str:
        """How callers name `service` on `node`: itself, or its instance there for a `pick: each` service."""
        spec = self.services.get(service)
        return instance(service, node) if spec is not None and spec.pick == "each" else service

    def reached(self, workload: str) -> tuple[str, ...]:
        """The services a workload's tasks reach: its entry and every service it calls, entry first."""
        reached, todo = [], [self.workloads[workload].entry]
        while todo:
            service = todo.pop(0)
            if service not in reached:
                reached.append(service)
                todo += self.services[service].calls
        return tuple(reached)

    def unfilled(self, workload: str, groups: Iterable[str]) -> tuple[str, ...]:
        """The groups a workload's services are placed in that have no node among `groups` (sorted)."""
        filled = set(groups)
        return tuple(sorted({self.services[s].group for s in self.reached(workload)} - filled))

    def placeable(self, groups: Iterable[str]) -> tuple[str, ...]:
        """The services a lab whose nodes fill `groups` runs: those whose group has a node and whose
        callees all run (the deploy's lab_services places exactly these)."""
        filled, placed = set(groups), []
        for name, spec in self.services.items():  # callees first
            if spec.group in filled and all(callee in placed for callee in spec.calls):
                placed.append(name)
        return tuple(placed)

    def runnable(self, groups: Iterable[str]) -> tuple[str, ...]:
        """The workloads whose services such a lab runs."""
        filled = set(groups)
        return tuple(name for name in self.workloads if not self.unfilled(name, filled))


def instance(service: str, node: str) -> str:
    """How callers name the instance of a `pick: each` service on `node`."""
    return f"{service}@{node}"


def service_of(name: str) -> str:
    """The catalog service of a peer's name: itself, or the service of an instance (`<service>@<node>`)."""
    return name.partition("@")[0]


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
