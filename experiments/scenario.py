"""Scenario files (`experiments/scenarios/*.yaml`): what one experiment runs, validated on load
with errors that name the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lab.config import LabConfig
from lab.errors import ConfigError
from lab.validation import FieldError, read_yaml, validate
from workload.catalog import CATALOG
from workload.config import SERVICES
from workload.knobs import Knobs

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
ALL = tuple(CATALOG.workloads)
PROBES = ("lifetime", "state", "connect", "rtt", "retrans", "pcap")
# `state` (every TCP state transition) is opt-in: the analysis reads none of it, and per connection
# it is the costliest probe (benchmarks/probe_cost.py: ten transitions, a third of all the probes'
# host CPU per loopback connection, most of it bpftrace draining its events).
DEFAULT_PROBES = tuple(p for p in PROBES if p != "state")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tasks(Model):
    count: int = Field(ge=1, le=100_000)
    """Measured tasks per repetition, from the seeded task set (`workload.tasks.make_tasks`)."""
    seed: int = Field(default=1, ge=0)
    """Which tasks: the same seed gives the same tasks in every scenario."""
    dataset_seed: int = Field(default=1, ge=0)
    """The seed the database was deployed with (inventory/group_vars lab_db_seed): tasks ask about its orders."""


class Load(Model):
    """Closed loop (`concurrency` tasks in flight) or open loop (`rate_per_s` Poisson arrivals)."""

    concurrency: int | None = Field(default=None, ge=1, le=1024)
    rate_per_s: float | None = Field(default=None, gt=0, le=10_000)

    @model_validator(mode="after")
    def _one_mode(self) -> Load:
        if (self.concurrency is None) == (self.rate_per_s is None):
            raise ValueError("give exactly one of concurrency (closed loop) or rate_per_s (open loop)")
        return self

    @property
    def mode(self) -> Literal["closed", "open"]:
        return "closed" if self.concurrency is not None else "open"


class Impairment(Model):
    """Traffic control on one directed link: what `node` sends on its lab interface (to `to` only, if given)."""

    node: str
    to: str | None = None
    delay_ms: float = Field(default=0, ge=0, le=60_000)
    jitter_ms: float = Field(default=0, ge=0, le=60_000)
    loss_pct: float = Field(default=0, ge=0, le=100)
    rate_mbit: float | None = Field(default=None, gt=0, le=100_000)

    @model_validator(mode="after")
    def _does_something(self) -> Impairment:
        if not (self.delay_ms or self.loss_pct or self.rate_mbit):
            raise ValueError(
                "an impairment needs at least one of delay_ms, loss_pct, rate_mbit; add one or remove the entry"
            )
        if self.jitter_ms and not self.delay_ms:
            raise ValueError("jitter_ms needs delay_ms; add a delay or remove the jitter")
        if self.to == self.node:
            raise ValueError(f"'to' names the node itself ({self.node}); name another node or drop 'to'")
        return self


SERVICE_UNITS = ("llm", *SERVICES)
"""The services kill_service may name: each runs as the systemd unit lab-<service> (roles/)."""


class Injection(Model):
    """A fault injected on `node` while the tasks run, `at_s` seconds after the first task (warm-up
    included) went out; the manifest records it (`injected`) and names it among the run's faults."""

    kind: Literal["kill_service", "link_down", "stop_node", "fill_disk"]
    """kill_service: SIGKILL to a lab service's main process (systemd restarts it, as in production);
    link_down: the node's lab interface down for `for_s`, so every packet to and from it is dropped;
    stop_node: the node powered off (`lab up` starts it again); fill_disk: the file system holding
    the node's lab state filled for `for_s` (VMs only: a container's disk is the host's)."""
    node: str
    at_s: float = Field(ge=0, le=86_400)
    for_s: float | None = Field(default=None, gt=0, le=3600)
    service: str | None = None
    """kill_service: llm, or a workload service placed on `node` (agent-a, tool-db, ...)."""

    @model_validator(mode="after")
    def _fits_its_kind(self) -> Injection:
        timed = self.kind in ("link_down", "fill_disk")
        if timed != (self.for_s is not None):
            raise ValueError(
                f"{self.kind} {'needs for_s (seconds it lasts)' if timed else 'takes no for_s'}; "
                f"{'add' if timed else 'remove'} it"
            )
        if (self.kind == "kill_service") != (self.service is not None):
            raise ValueError(
                "kill_service needs service (llm, agent-a, ...)"
                if self.kind == "kill_service"
                else f"{self.kind} takes no service; remove it"
            )
        if self.service is not None and self.service not in SERVICE_UNITS:
            raise ValueError(f"no lab service {self.service!r}; use one of {', '.join(SERVICE_UNITS)}")
        return self


class Timeouts(Model):
    """How long each hop of an agentic task may take, sent with every task (workload.telemetry.H_TIMEOUTS):
    the CPU LLM in a TCG VM needs far more than one on a GPU. Preflight measures the LLM and refuses
    a run whose LLM calls cannot finish within `llm_s`."""

    llm_s: float = Field(default=60, gt=0, le=86_400)
    """One LLM request, and the longest silence while it streams."""
    tool_s: float = Field(default=20, gt=0, le=86_400)
    """One MCP tool call."""
    agent_s: float = Field(default=120, gt=0, le=86_400)
    """Agent B's whole subtask, as Agent A waits for it."""

    def by_hop(self) -> dict[str, float]:
        """{llm, tool, agent: seconds}, as the workload reads them (workload.telemetry.timeout_for)."""
        return {name.removesuffix("_s"): seconds for name, seconds in self.model_dump().items()}


class Scenario(Model):
    name: str
    workload: str
    """What the driver sends where: a workload of the catalog (workload/topologies/), which names its entry."""
    tasks: Tasks
    load: Load = Load(concurrency=1)
    warmup: int = Field(default=0, ge=0, le=10_000)
    """Tasks run before the measured ones (their own ids, `warmup-...`), marked warmup in the results."""
    repetitions: int = Field(default=1, ge=1, le=1000)
    task_timeout_s: float = Field(default=300, gt=0)
    """How long the driver waits for a task, and the task's deadline at the agent."""
    timeouts: Timeouts = Timeouts()
    knobs: Knobs = Knobs()
    """The protocol choices that shape the traffic (workload/knobs.py says what each default follows)."""
    probes: list[Literal["lifetime", "state", "connect", "rtt", "retrans", "pcap"]] = Field(
        default=list(DEFAULT_PROBES), min_length=1
    )
    """The probes to run on every node (default: all but `state`, which costs the most per connection and
    which the analysis does not read: add it for every transition's timeline)."""
    rtt_interval_ms: int = Field(default=100, ge=1, le=60_000)
    """RTT windows: one record per socket per this many ms, aggregated in the kernel (min/max/count of
    every segment's smoothed RTT), so a longer window costs less and loses no spike, only time resolution."""
    rtt_max_per_s: int = Field(default=1000, ge=1, le=1_000_000)
    """RTT windows: at most this many records per second per node (a window past the cap keeps aggregating)."""
    bpf_stats: bool = False
    """Measure the kernel's time in the probes' BPF programs (manifest `probe_cpu_s.*.bpf`). It costs
    two clock reads per BPF program run: ~1.5 % more host CPU in the baseline, so it is off by default."""
    impairments: list[Impairment] = []
    inject: list[Injection] = []
    """Faults injected while the tasks run (the fault matrix in tests/integration/test_faults.py)."""
    offload: Literal["keep", "off"] = "keep"
    """The lab interfaces' segmentation and receive offloads (GSO, TSO, GRO) during the run. `keep`: as
    the provider set them (the capture then holds segments coalesced up to 64 KB, not wire packets);
    `off`: turned off on every node for the run and restored after, so packets are wire-sized, at some
    CPU cost. Their state at the start is recorded either way (manifest `offload`)."""

    @model_validator(mode="after")
    def _known_workload(self) -> Scenario:
        if self.workload not in CATALOG.workloads:
            raise FieldError(
                ("workload",),
                f"no workload {self.workload!r} in workload/topologies/; use one of {', '.join(CATALOG.workloads)}",
            )
        return self

    @model_validator(mode="after")
    def _distinct_links(self) -> Scenario:
        targets: dict[str, list[str | None]] = {}
        for index, item in enumerate(self.impairments):
            seen = targets.setdefault(item.node, [])
            if item.to in seen or None in seen or (item.to is None and seen):
                raise FieldError(
                    ("impairments", index),
                    f"link {item.node} -> {item.to or 'all'} overlaps an earlier entry; "
                    "give each link once, either one entry without 'to' or one per peer",
                )
            seen.append(item.to)
        return self

    def check_nodes(self, lab: LabConfig, path: Path | str) -> None:
        """The lab has nodes for every service of the workload; impairments and injections name nodes
        of this lab. An error starts with `path` (the file, and where in it)."""
        if unfilled := CATALOG.unfilled(self.workload, lab.groups):
            raise ConfigError(
                f"{path}: workload: {self.workload} runs services on nodes in group {', '.join(unfilled)}, and "
                f"{lab.path.name} has none; add nodes with groups: [{unfilled[0]}] to it, "
                "then `lab up` and `lab deploy`"
            )
        names = [n.name for n in lab.nodes]
        named = [
            ("impairments", i, k, getattr(item, k)) for i, item in enumerate(self.impairments) for k in ("node", "to")
        ]
        named += [("inject", i, "node", item.node) for i, item in enumerate(self.inject)]
        for key, index, field, value in named:
            if value is not None and value not in names:
                raise ConfigError(
                    f"{path}: {key}[{index}].{field}: no node '{value}' in {lab.path.name}; "
                    f"use one of {', '.join(names)}"
                )


def named(name: str, lab: LabConfig) -> list[str]:
    """The scenarios `lab experiment NAME` runs: NAME, or for `all` every shipped workload this lab's
    nodes can run (fanout wants nodes in group workers)."""
    return list(CATALOG.runnable(lab.groups)) if name == "all" else [name]


def scenario_path(name_or_path: str) -> Path:
    """A scenario file: a path to a YAML file, or the name of one in experiments/scenarios/."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        return candidate
    path = SCENARIO_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")))
        raise ConfigError(f"no scenario '{name_or_path}'; use one of {known}, 'all', or a path to a .yaml file")
    return path


def load_scenario(
    name_or_path: str, lab: LabConfig, tasks: int | None = None, warmup: int | None = None
) -> tuple[Scenario, Path]:
    """The validated scenario; `tasks` and `warmup` (from the command line) replace the file's values."""
    path = scenario_path(name_or_path)
    data = read_yaml(path, "pass a scenario name (baseline, simple, multihop, fanout) or an existing .yaml file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (workload, tasks, load, ...), got {type(data).__name__}")
    if tasks is not None:
        data["tasks"] = {**(data.get("tasks") or {}), "count": tasks}
    if warmup is not None:
        data["warmup"] = warmup
    scenario = validate(Scenario, {"name": path.stem, **data}, path)
    scenario.check_nodes(lab, path)
    return scenario, path
