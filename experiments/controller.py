"""The experiment controller: preflight, clock offsets, impairments, probes started on every node,
the tasks driven from here, probes stopped, every file pulled back and checked, manifest.json.

A probe that dies, a node that stops answering, a task that fails or Ctrl-C is recorded in the
manifest as a fault; whatever the other nodes measured is still pulled and kept.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from experiments import drive, node_script, services
from experiments.manifest import (
    Faults,
    checksums,
    controller_versions,
    probe_cpu,
    probe_faults,
    probe_summary,
)
from experiments.progress import Reporter
from experiments.remote import NodeError, NodeSession, open_session, parallel
from experiments.scenario import Scenario, load_scenario, named
from lab import inventory, runlayout, state
from lab.config import LabConfig
from lab.errors import LabError
from lab.runlayout import (
    Conditions,
    Impairment,
    Injected,
    LlmSpeed,
    Manifest,
    Offload,
    ProbeSummary,
    ScenarioRecord,
    Tasks,
)
from lab.state import LabState
from workload.config import AGENTS_PER_TASK, LLM_MAX_TOKENS
from workload.llm.speed import SpeedError, measure

MONITOR_INTERVAL_S = 5.0
CONTROLLER = "controller"  # the host the controller runs on, in the manifest's per-node records
REPO = Path(__file__).resolve().parents[1]


def new_run_id(scenario: str, now_s: float | None = None) -> str:
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now_s))}-{scenario}"


def runs_root(lab: LabConfig) -> Path:
    """runs/ beside lab.yaml: every run directory, and the sweeps' state under runs/sweeps/."""
    return lab.path.parent.resolve() / runlayout.RUNS


def run(lab: LabConfig, scenario: Scenario, scenario_file: Path, reporter: Reporter) -> Path:
    """One scenario end to end; returns the run directory. Re-raises Ctrl-C after the data is safe."""
    current = state.require(lab)
    run_id = new_run_id(scenario.name)
    run_dir = runs_root(lab) / run_id
    if run_dir.exists():
        raise LabError(f"{run_dir} already exists; wait a second and run again")
    reporter.phase(f"[bold]{scenario.name}[/bold]: connecting to {len(current.nodes)} nodes")
    sessions = connect(current, lab, run_id)
    try:
        reporter.phase("preflight: services, probes, versions")
        checks = preflight(sessions, lab, scenario)
        if scenario.workload in AGENTS_PER_TASK:
            reporter.phase("preflight: the LLM's speed against the scenario's timeouts")
        llm_speed = check_llm_speed(checks, scenario, scenario_file, inventory.api_token(lab))
        run_dir.mkdir(parents=True)
        Experiment(lab, current, scenario, scenario_file, run_dir, sessions, reporter, checks, llm_speed).execute()
    finally:
        for session in sessions:
            session.close()
    return run_dir


def run_named(
    lab: LabConfig, name: str, reporter: Reporter, tasks: int | None = None, warmup: int | None = None
) -> list[Path]:
    """`lab experiment NAME|all`: every scenario validated first, then run one after the other."""
    loaded = [load_scenario(n, lab, tasks, warmup) for n in named(name, lab)]
    return [run(lab, scenario, path, reporter) for scenario, path in loaded]


def connect(current: LabState, lab: LabConfig, run_id: str) -> list[NodeSession]:
    known_hosts = inventory.known_hosts_file(lab)
    opened: list[NodeSession] = []
    errors = []
    for node in current.nodes:
        try:
            opened.append(open_session(node, known_hosts, run_id))
        except LabError as exc:
            errors.append(str(exc))
    if errors:
        for session in opened:
            session.close()
        raise LabError("; ".join(errors))
    return opened


def preflight(sessions: list[NodeSession], lab: LabConfig, scenario: Scenario) -> dict[str, dict]:
    """Every node answers, every service is deployed and healthy, every probe the scenario wants can attach."""
    answers = parallel(
        lambda s: s.step(
            "preflight",
            timeout=node_script.DETECT_TIMEOUT_S + 120,
            **services.preflight_args(s.node.name, s.node.address, lab),
        ),
        sessions,
    )
    problems = [f"{node}: {answer}" for node, answer in answers.items() if isinstance(answer, Exception)]
    checks: dict[str, dict] = {n: a for n, a in answers.items() if not isinstance(a, Exception)}
    for node, answer in checks.items():
        problems += _preflight_problems(node, answer, scenario)
    if not problems and (absent := services.missing(checks, scenario.workload)):
        problems.append(f"no node runs {', '.join(absent)}, which {scenario.workload} needs; run `lab deploy`")
    if problems:
        raise LabError("preflight failed: " + "; ".join(problems))
    return checks


def _preflight_problems(node: str, answer: dict, scenario: Scenario) -> list[str]:
    if answer["detect_error"]:
        return [
            f"{node}: the probe runner {services.COLLECTORS} does not run ({answer['detect_error']}); run `lab deploy`"
        ]
    needed = services.needed(scenario.workload)
    unhealthy = [
        f"{name} ({_said(s['health'])})"
        for name, s in answer["services"].items()
        if name in needed and not s["health"]["ok"]
    ]
    problems = (
        [f"{node}: not healthy: {', '.join(unhealthy)}; see `journalctl -u lab-SERVICE` there or run `lab deploy`"]
        if unhealthy
        else []
    )
    problems += [
        f"{node}: probe {probe} cannot attach ({answer['probes'][probe].get('unavailable')}); "
        "remove it from the scenario's probes"
        for probe in scenario.probes
        if answer["probes"].get(probe, {}).get("source") is None
    ]
    return problems


INJECTED_END_S = 2.0
"""A lasting fault ends this long after its for_s at most: the node starts its end 0.5 s late (node_script._later)."""
SPEED_MARGIN = 1.25
"""How much slower than measured an LLM call may turn out under load before a timeout cuts it."""
SLOW_LLM_ADVICE = (
    "use KVM (accelerator: kvm, on a host with vmx/svm), the nspawn provider, a smaller llm.cpu_model "
    "in lab.yaml, a lower knobs.max_steps, or the longer timeouts named above"
)


def check_llm_speed(checks: dict[str, dict], scenario: Scenario, scenario_file: Path, token: str) -> LlmSpeed | None:
    """For an agentic workload: one cold streamed completion of an agent-sized prompt from here to
    the LLM, and a refusal, before any probe starts, when calls at that speed cannot finish within
    the scenario's timeouts. Returns the measurement for the manifest."""
    if scenario.workload not in AGENTS_PER_TASK:
        return None
    node, _ = services.placement(checks)["llm"]
    t = scenario.timeouts
    try:
        model = served_model(checks).get("id", "")
        speed = measure(services.url(checks, "llm"), model, LLM_MAX_TOKENS, t.llm_s, token=token)
    except SpeedError as exc:
        raise LabError(
            f"preflight: the LLM on {node} did not answer an agent-sized prompt in time: {exc}; "
            f"timeouts.llm_s in {scenario_file} is {t.llm_s:g} s; {SLOW_LLM_ADVICE}"
        ) from exc
    call = speed.call_s(LLM_MAX_TOKENS) * SPEED_MARGIN
    steps = scenario.knobs.max_steps
    calls = AGENTS_PER_TASK[scenario.workload] * steps
    limits = [
        ("timeouts.llm_s", t.llm_s, call, "one call"),
        ("task_timeout_s", scenario.task_timeout_s, calls * call, f"a task's {calls} calls at knobs.max_steps {steps}"),
    ]
    if AGENTS_PER_TASK[scenario.workload] > 1:
        limits.append(("timeouts.agent_s", t.agent_s, steps * call, f"a hand-off's {steps} calls to another agent"))
    short = [
        f"{what}: ~{need:.0f} s, more than {key} ({limit:g} s; set it to at least {need:.0f})"
        for key, limit, need, what in limits
        if need > limit
    ]
    measured = LlmSpeed(
        node=node,
        ttft_s=round(speed.ttft_s, 3),
        tokens_per_s=round(speed.tokens_per_s, 2),
        prompt_chars=speed.prompt_chars,
        max_tokens=LLM_MAX_TOKENS,
        call_s_with_margin=round(call, 2),
    )
    if short:
        raise LabError(
            f"preflight: the LLM on {node} takes {speed.ttft_s:.1f} s to the first token of an agent-sized "
            f"prompt ({speed.prompt_chars} characters) and decodes {speed.tokens_per_s:.1f} tokens/s, so a call of "
            f"up to {LLM_MAX_TOKENS} tokens takes ~{call:.0f} s with a {SPEED_MARGIN:g}x margin: "
            + "; ".join(short)
            + f" in {scenario_file}; or {SLOW_LLM_ADVICE}"
        )
    return measured


def served_model(checks: dict[str, dict]) -> dict[str, Any]:
    """What the LLM server says it serves (its /v1/models entry), or {} when it did not say."""
    models = services.placement(checks)["llm"][1]["models"]
    return (models["body"].get("data") or [{}])[0] if models["ok"] and isinstance(models["body"], dict) else {}


def _said(health: dict) -> str:
    return f"HTTP {health['status']}: {health['body']}" if health["status"] else str(health["body"])


class Experiment:
    def __init__(
        self,
        lab: LabConfig,
        current: LabState,
        scenario: Scenario,
        scenario_file: Path,
        run_dir: Path,
        sessions: list[NodeSession],
        reporter: Reporter,
        checks: dict[str, dict],
        llm_speed: LlmSpeed | None = None,
    ) -> None:
        self.lab, self.scenario, self.run_dir, self.sessions, self.reporter = lab, scenario, run_dir, sessions, reporter
        self.entry = services.entry(checks, scenario.workload, inventory.api_token(lab))
        self.host_address = lab.network.host_address.exploded
        self.faults = Faults()
        self.offsets: dict[str, dict[str, int]] = {}
        self.impaired: list[NodeSession] = []
        self.down: set[str] = set()
        """Nodes an injected fault powered off: no step is sent to them after that."""
        self.probes_started = False
        self.done = 0
        self.manifest = Manifest(
            run_id=run_dir.name,
            scenario=ScenarioRecord(
                name=scenario.name, file=str(scenario_file), config=scenario.model_dump(mode="json")
            ),
            lab=lab.model_dump(mode="json"),
            provider=current.provider,
            accelerator=current.accelerator,
            image=current.image,
            started_at_ns=time.time_ns(),
            git=runlayout.Git.of(REPO),
            versions=_versions(checks, scenario.workload),
            placement=services.placed(checks, scenario.workload),
            llm_speed=llm_speed,
        )
        for node, answer in checks.items():
            for stale in answer["stale_runners"]:
                self.fault(
                    node,
                    f"a probe runner left running by an earlier run (pid {stale['pid']}) was {stale['outcome']} "
                    f"before this one; its files stay in {stale['run_dir']} there",
                )

    def execute(self) -> None:
        interrupted = False
        try:
            self._clock("start")
            self._offload()
            self._impair()
            self._start_probes()
            self._conditions("start")
            interrupted = self._drive()
            if not interrupted:
                self._await_injected()
        except KeyboardInterrupt:
            interrupted = True
        finally:
            with _sigint_deferred(self.reporter):
                if interrupted:
                    self.fault(
                        "controller",
                        f"interrupted (Ctrl-C) after {self.done} task(s); stopping the probes and pulling what exists",
                    )
                self._finish()
        if interrupted:
            raise KeyboardInterrupt

    def fault(self, node: str, what: str) -> None:
        if self.faults.add(node, what):
            self.reporter.fault(node, what)

    def _each(self, what: str, fn: Any, sessions: list[NodeSession] | None = None) -> dict[str, Any]:
        """`fn` on every node in parallel (but those an injected fault powered off); a node's exception
        becomes a fault; the answers of the others."""
        answers = {}
        chosen = [s for s in (self.sessions if sessions is None else sessions) if s.node.name not in self.down]
        for node, answer in parallel(fn, chosen).items():
            if isinstance(answer, Exception):
                self.fault(node, f"{what}: {answer}")
            else:
                answers[node] = answer
        return answers

    def _clock(self, when: str) -> None:
        for node, offset in self._each(f"clock offset ({when})", lambda s: s.clock()).items():
            self.manifest.clock_offsets.setdefault(node, {})[when] = offset

    def _conditions(self, when: str) -> None:
        """CPU counters, load and offloads of every node and of the controller's host (manifest `conditions`)."""
        answers = self._each(
            f"conditions not read ({when})", lambda s: s.step("conditions", timeout=60, address=s.node.address)
        )
        try:
            answers[CONTROLLER] = node_script.conditions(self.host_address)
        except (OSError, RuntimeError) as exc:
            self.fault(CONTROLLER, f"conditions not read ({when}): {exc}")
        for node, answer in answers.items():
            self.manifest.conditions.setdefault(node, {})[when] = Conditions.model_validate(answer)

    def _offload(self) -> None:
        """`offload: off`: GSO/TSO/GRO off on every node's lab interface and on the host's (the controller's
        SSH and the driver's requests leave from it); features fixed by a driver stay as they are."""
        if self.scenario.offload == "keep":
            return
        self.reporter.phase("offloads: GSO, TSO and GRO off on every lab interface and the host's")
        read = self._each("offloads not read", lambda s: s.step("conditions", address=s.node.address))
        before = {node: answer["offload"] for node, answer in read.items()}
        changed = self._each(
            "offloads not turned off",
            lambda s: s.step("set_offload", address=s.node.address, state=_settable(before[s.node.name], "off")),
            [s for s in self.sessions if s.node.name in before],
        )
        for node, after in changed.items():
            self.manifest.offload[node] = Offload(before=before[node], after=after)
        try:
            host = node_script.offloads(node_script.lab_interface(self.host_address))
            after = node_script.set_offload(self.host_address, _settable(host, "off"))
            self.manifest.offload[CONTROLLER] = Offload(before=host, after=after)
        except (OSError, RuntimeError) as exc:
            self.fault(CONTROLLER, f"offloads not turned off on the host's lab interface: {exc}")
        if len(self.manifest.offload) < len(self.sessions) + 1:
            raise LabError("offloads could not be turned off everywhere (see the faults above); nothing was measured")

    def _restore_offload(self) -> None:
        changed = [s for s in self.sessions if s.node.name in self.manifest.offload]
        restored = self._each(
            "offloads not restored",
            lambda s: s.step(
                "set_offload", address=s.node.address, state=_settable(self.manifest.offload[s.node.name].before)
            ),
            changed,
        )
        if CONTROLLER in self.manifest.offload:
            try:
                before = _settable(self.manifest.offload[CONTROLLER].before)
                restored[CONTROLLER] = node_script.set_offload(self.host_address, before)
            except (OSError, RuntimeError) as exc:
                self.fault(CONTROLLER, f"offloads not restored on the host's lab interface: {exc}")
        for node, now in restored.items():
            self.manifest.offload[node].restored = now

    def _impair(self) -> None:
        links: dict[str, list[dict]] = defaultdict(list)
        for item in self.scenario.impairments:
            to = self.lab.node(item.to).address.exploded if item.to else None
            links[item.node].append({**item.model_dump(), "to_address": to})
        self.impaired = [s for s in self.sessions if s.node.name in links]
        if not self.impaired:
            return
        self.reporter.phase("impairments: " + ", ".join(f"{i.node}→{i.to or 'all'}" for i in self.scenario.impairments))
        applied = self._each(
            "impairment failed",
            lambda s: s.step("impair", address=s.node.address, links=links[s.node.name]),
            self.impaired,
        )
        if len(applied) < len(self.impaired):
            raise LabError(
                "an impairment could not be applied (see the faults above); the run stopped before the probes started"
            )
        for node, answer in applied.items():
            for link in links[node]:
                self.manifest.impairments_applied.append(_applied(node, link, answer))
                if not answer["netem"]:
                    self.reporter.phase(
                        f"[yellow]{node}: no netem in this kernel: only rate limits (htb) apply, not delay or loss"
                    )

    def _start_probes(self) -> None:
        self.reporter.phase(f"starting probes on {len(self.sessions)} nodes: {', '.join(self.scenario.probes)}")
        self.probes_started = True
        rtt = (self.scenario.rtt_interval_ms, self.scenario.rtt_max_per_s)
        started = self._each(
            "probes did not start", lambda s: s.start_probes(self.scenario.probes, rtt, self.scenario.bpf_stats)
        )
        for node, answer in started.items():
            self.offsets[node] = answer["offsets"]
            self._record_probes(node, answer["status"])
            if answer["error"]:
                self.fault(node, f"probes did not start: {answer['error']}")
        runlayout.write_manifest(self.manifest, self.run_dir)

    def _record_probes(self, node: str, status: dict | None) -> dict[str, ProbeSummary]:
        summary = probe_summary(status)
        if summary:
            self.manifest.probes[node] = summary
            self.manifest.probe_cpu_s[node] = probe_cpu(status)
        for line in probe_faults(summary):
            self.fault(node, line)
        return summary

    def _drive(self) -> bool:
        phases = drive.plan(self.scenario)
        measured = sum(len(p) for p in phases if not p[0].warmup)
        load = self.scenario.load
        how = f"{load.concurrency} in flight" if load.mode == "closed" else f"{load.rate_per_s}/s Poisson arrivals"
        self.reporter.phase(f"driving {measured} task(s) ({self.scenario.warmup} warm-up first), {how}")
        self.manifest.tasks = Tasks(planned=measured)
        stop = threading.Event()
        monitor = threading.Thread(target=self._monitor, args=(stop,), name="probe-monitor", daemon=True)
        injector = threading.Thread(target=self._inject, args=(stop,), name="fault-injector", daemon=True)
        with (
            open(runlayout.results_path(self.run_dir), "a", encoding="utf-8") as results,
            self.reporter.tasks(sum(len(p) for p in phases)),
        ):
            monitor.start()
            injector.start()
            try:
                drive.drive(
                    phases,
                    self.scenario,
                    self.entry,
                    runlayout.telemetry_dir(self.run_dir),
                    lambda o: self._done(o, results),
                )
            except KeyboardInterrupt:
                return True
            finally:
                stop.set()
                monitor.join()
                injector.join()
        return False

    def _await_injected(self) -> None:
        """Until every injected fault that lasts (a link down, a disk full) is over: stopping the probes
        through it would find the node unreachable or its disk full, and pull nothing from it."""
        ends = [i.done_ns + (i.for_s + INJECTED_END_S) * 1e9 for i in self.manifest.injected if i.for_s and i.done_ns]
        if ends and (wait_s := (max(ends) - time.time_ns()) / 1e9) > 0:
            self.reporter.phase(f"the tasks ended; waiting {wait_s:.0f} s for the injected faults to end")
            time.sleep(wait_s)

    def _done(self, outcome: drive.Outcome, results: TextIO) -> None:
        results.write(_json_line(outcome.record()))
        results.flush()
        self.done += 1
        tasks = self.manifest.tasks
        assert tasks is not None  # set before the first task is driven
        if outcome.planned.warmup:
            tasks.warmup += 1
        elif outcome.result.ok:
            tasks.total, tasks.ok = tasks.total + 1, tasks.ok + 1
        else:
            tasks.total, tasks.failed = tasks.total + 1, tasks.failed + 1
        if not outcome.result.ok:
            r = outcome.result
            self.fault("controller", f"task {r.task_id} (repetition {outcome.planned.repetition}) failed: {r.error}")
        self.reporter.task_done(outcome)

    def _inject(self, stop: threading.Event) -> None:
        """Each of the scenario's faults at its time after the tasks began, recorded in the manifest and
        named among the faults; one still due when the tasks ended is named as not injected."""
        started = time.monotonic()
        sessions = {s.node.name: s for s in self.sessions}
        for item in sorted(self.scenario.inject, key=lambda i: i.at_s):
            record = Injected.model_validate(item.model_dump())
            if stop.wait(max(0.0, started + item.at_s - time.monotonic())):
                record.error = "not injected: the tasks ended (done or interrupted) before at_s"
            elif item.node in self.down:
                record.error = "not injected: an earlier fault powered the node off"
            else:
                session = sessions[item.node]
                record.when_ns = time.time_ns()
                try:
                    record.done = session.step(
                        "inject",
                        60,
                        kind=item.kind,
                        address=session.node.address,
                        service=item.service,
                        for_s=item.for_s,
                    )
                    record.done_ns = time.time_ns()
                except NodeError as exc:
                    record.error = str(exc)
            self.manifest.injected.append(record)
            self.fault(item.node, record.text())
            if item.kind == "stop_node" and record.when_ns and not record.error:
                self.down.add(item.node)
                self.fault(
                    item.node,
                    f"powered off by an injected fault: nothing more is asked of it or pulled from it; its "
                    f"records stay on it in {sessions[item.node].run_dir} (`lab up` starts it again)",
                )

    def _monitor(self, stop: threading.Event) -> None:
        """Every few seconds: each node's probe status (record counts, probes that died, nodes that
        stopped answering)."""
        while not stop.wait(MONITOR_INTERVAL_S):
            answers = self._each("not answering", lambda s: s.step("status", timeout=30, run_dir=s.run_dir))
            records = {}
            for node, answer in answers.items():
                summary = self._record_probes(node, answer["status"])
                records[node] = sum(p.records for p in summary.values())
                if not answer["alive"]:
                    self.fault(node, "the probe runner is not running")
            self.reporter.records(records)

    def _finish(self) -> None:
        if self.probes_started:
            self._conditions("end")
            self.reporter.phase("stopping probes")
        stopped = (
            self._each(f"probes did not stop; their data stays on the node in {self.sessions[0].run_dir}", self._stop)
            if self.probes_started
            else {}
        )
        if self.impaired:
            self._each("impairment not removed", lambda s: s.step("unimpair", address=s.node.address), self.impaired)
        self._restore_offload()
        if stopped:
            self.reporter.phase("pulling files")
            parallel(
                lambda s: self._collect(s, stopped[s.node.name]), [s for s in self.sessions if s.node.name in stopped]
            )
        self.manifest.ended_at_ns = time.time_ns()
        self.manifest.faults = self.faults.items
        self.manifest.files = checksums(self.run_dir)
        runlayout.write_manifest(self.manifest, self.run_dir)
        self.reporter.summary(self.manifest, self.run_dir)

    def _stop(self, session: NodeSession) -> dict:
        node = session.node.name
        stopped = session.stop_probes(self.offsets.get(node, {}))
        self._record_probes(node, stopped["status"])
        if stopped["runner"] != "stopped":
            self.fault(node, f"probe runner {stopped['runner']} at the end of the run")
        return stopped

    def _collect(self, session: NodeSession, stopped: dict) -> None:
        """The end clock offset, then every file over SFTP; the node's copy goes once all matched."""
        node = session.node.name
        try:
            self.manifest.clock_offsets.setdefault(node, {})["end"] = session.clock()
            bad = session.pull(stopped["files"], runlayout.node_dir(self.run_dir, node))
            if bad:
                self.fault(
                    node,
                    f"{len(bad)} file(s) differ after two pulls ({', '.join(bad[:3])}); "
                    f"the originals stay in {session.run_dir}",
                )
            else:
                session.step("cleanup", run_dir=session.run_dir)
        except NodeError as exc:
            self.fault(node, f"{exc}; what was not pulled stays on the node in {session.run_dir}")


def _settable(features: dict[str, str], to: str | None = None) -> dict[str, str]:
    """The offloads a driver lets change ("on [fixed]" stays), each set `to` or back to its value."""
    return {k: to or v.split()[0] for k, v in features.items() if "fixed" not in v and not v.startswith("unknown")}


def _versions(checks: dict[str, dict], workload: str) -> dict[str, Any]:
    keys = ("kernel", "python", "bpftrace", "tcpdump", "workload", "libraries")
    versions = {
        "controller": controller_versions(),
        "nodes": {node: {k: answer[k] for k in keys} for node, answer in checks.items()},
    }
    if "llm" not in services.needed(workload):
        return versions  # the baseline calls no LLM: whatever serves one (or not) is not part of its run
    served = served_model(checks)
    return {
        **versions,
        "llm": {
            "node": services.placement(checks)["llm"][0],
            "backend": served.get("owned_by"),
            "model": served.get("id"),
            "served": served,
        },
    }


def _applied(node: str, link: dict, answer: dict) -> Impairment:
    wanted = {k: link[k] for k in ("delay_ms", "jitter_ms", "loss_pct", "rate_mbit") if link[k]}
    by = {k: ("netem" if answer["netem"] else None) for k in wanted if k != "rate_mbit"}
    if "rate_mbit" in wanted:
        by["rate_mbit"] = "htb"
    not_applied = [k for k, v in by.items() if v is None]
    return Impairment(
        node=node,
        to=link["to"],
        iface=answer["iface"],
        requested=wanted,
        applied_by=by,
        not_applied=not_applied,
        reason="no netem qdisc in this kernel" if not_applied else None,
        qdisc=answer["qdisc"],
    )


def _json_line(record: dict) -> str:
    return json.dumps(record, separators=(",", ":")) + "\n"


@contextmanager
def _sigint_deferred(reporter: Reporter) -> Iterator[None]:
    """While probes stop and files come back, Ctrl-C only says to wait."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(
        signal.SIGINT, lambda *_: reporter.phase("[yellow]still stopping probes and pulling files; please wait")
    )
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
