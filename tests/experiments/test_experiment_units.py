"""The controller's pure parts: clock offset math, traffic-control commands, the task plan,
probe summaries, telemetry slices, checksums, service placement, the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import node_script, services
from experiments.clock import Sample, best_offset
from experiments.controller import new_run_id
from experiments.drive import arrivals, plan
from experiments.manifest import (
    Faults,
    checksums,
    probe_cpu,
    probe_faults,
    probe_summary,
)
from experiments.scenario import Scenario
from lab.runlayout import LAYOUT_VERSION, Manifest, write_manifest
from tests.conftest import require_root
from workload.driver import Entry
from workload.llm import TOKEN_ENV


def test_offset_comes_from_the_sample_with_the_shortest_round_trip():
    samples = [Sample(1_000, 1_600, 2_000), Sample(10_000, 10_150, 10_200), Sample(20_000, 20_900, 21_000)]
    offset = best_offset(samples)
    assert offset.offset_ns == 10_150 - 10_100 and offset.uncertainty_ns == 100
    assert offset.samples == 3 and offset.measured_at_ns == 10_000


def test_offset_sign_is_node_minus_controller():
    assert best_offset([Sample(0, 5_000_000, 100)]).offset_ns == 5_000_000 - 50
    with pytest.raises(ValueError):
        best_offset([])


def link(
    to: str | None = None, delay: float = 0, jitter: float = 0, loss: float = 0, rate: float | None = None
) -> dict:
    return {"to_address": to, "delay_ms": delay, "jitter_ms": jitter, "loss_pct": loss, "rate_mbit": rate}


def test_tc_one_peer_with_netem():
    commands = [" ".join(c) for c in node_script.tc_commands("host0", [link("10.0.0.13", 20, 5, 0.5, 100)], netem=True)]
    assert commands == [
        "tc qdisc replace dev host0 root handle 1: htb default 1",
        "tc class add dev host0 parent 1: classid 1:1 htb rate 10gbit",
        "tc class add dev host0 parent 1: classid 1:2 htb rate 100mbit ceil 100mbit",
        "tc qdisc add dev host0 parent 1:2 handle 20: netem delay 20ms 5ms loss 0.5%",
        "tc filter add dev host0 parent 1: protocol ip prio 1 u32 match ip dst 10.0.0.13/32 flowid 1:2",
    ]


def test_tc_all_traffic_without_netem_keeps_only_the_rate():
    commands = [" ".join(c) for c in node_script.tc_commands("eth0", [link(None, 20, rate=8)], netem=False)]
    assert commands[0].endswith("htb default 2")
    assert "classid 1:2 htb rate 8mbit ceil 8mbit" in commands[2]
    assert not any("netem" in c or "filter" in c for c in commands)


def test_tc_two_peers_get_their_own_classes():
    commands = node_script.tc_commands("host0", [link("10.0.0.12", loss=1), link("10.0.0.13", delay=3)], netem=True)
    flows = [c[-1] for c in commands if c[1] == "filter"]
    assert flows == ["1:2", "1:3"]
    assert ["loss", "1%"] == [a for a in commands[3] if a in ("loss", "1%")]


def scenario(**changes) -> Scenario:
    return Scenario.model_validate({"name": "t", "workload": "multihop", "tasks": {"count": 3, "seed": 4}, **changes})


def test_plan_warmup_then_repetitions_with_distinct_warmup_ids():
    phases = plan(scenario(warmup=2, repetitions=2))
    assert [len(p) for p in phases] == [2, 3, 3]
    assert all(p.warmup and p.task.task_id.startswith("warmup-s4-") for p in phases[0])
    assert [p.repetition for p in phases[2]] == [2, 2, 2]
    assert (
        [p.task.task_id for p in phases[1]]
        == [p.task.task_id for p in phases[2]]
        == ["s4-t0000", "s4-t0001", "s4-t0002"]
    )
    assert all(p.at_s is None for phase in phases for p in phase)


def test_open_loop_arrivals_are_seeded_poisson():
    phases = plan(scenario(load={"rate_per_s": 2.0}))
    times = [p.at_s for p in phases[0]]
    assert times == sorted(times) and times[0] > 0
    assert times == [p.at_s for p in plan(scenario(load={"rate_per_s": 2.0}))[0]]
    many = arrivals(4000, 2.0, seed=1)
    assert many[-1] / len(many) == pytest.approx(0.5, rel=0.05)


STATUS = {
    "probes": {
        "rtt": {
            "state": "stopped",
            "source": "bpftrace tracepoint:tcp:tcp_probe",
            "started": True,
            "records": 12,
            "lost_events": 1,
            "invalid_values": 2,
        },
        "lifetime": {
            "state": "exited",
            "source": "bpftrace x",
            "started": True,
            "records": 3,
            "error": "killed by SIGKILL",
            "exit_code": -9,
        },
        "retrans": {
            "state": "unavailable",
            "source": None,
            "started": False,
            "records": 0,
            "unavailable_reason": "no tracepoint",
        },
        "pcap:host0": {
            "state": "stopped",
            "source": "tcpdump -s 96",
            "started": True,
            "records": 0,
            "packets": 817,
            "packets_dropped": 2,
            "unwritten_bytes": 4096,
            "write_error": "pcap-host0.pcap: No space left on device",
        },
    }
}


def test_probe_summary_and_faults():
    summary = probe_summary(STATUS)
    assert summary["rtt"].model_dump() == {
        "state": "stopped",
        "source": "bpftrace tracepoint:tcp:tcp_probe",
        "started": True,
        "records": 12,
        "lost": 1,
        "invalid_values": 2,
        "unwritten_bytes": 0,
        "error": None,
    }
    assert summary["pcap:host0"].records == 817 and summary["pcap:host0"].lost == 2
    assert probe_faults(summary) == [
        "probe rtt wrote 2 record(s) with a value it could not read (null there, the reason in the record's `invalid`)",
        "probe lifetime exited: killed by SIGKILL",
        "probe retrans unavailable: no tracepoint",
        "probe pcap:host0 could not write 4096 bytes of its output (pcap-host0.pcap: No space left on device); "
        "the records in them are lost, the rest is whole",
    ]
    assert probe_summary(None) == {}


def test_probe_cpu_sums_the_runner_and_its_probe_processes_by_phase():
    status = {
        "cpu_s": {"attach": 0.5, "running": 1.0, "stopping": 0.25},
        "probes": {
            "rtt": {"pid": 10, "cpu_s": {"attach": 1.25, "running": 0.5, "stopping": 0.5}, "bpf_run_ns": 250_000_000},
            "state": {"pid": 11, "cpu_s": {"attach": 0.25, "running": None, "stopping": None}},  # died before attaching
            "retrans": {"pid": None, "cpu_s": None},  # unavailable: never spawned
        },
    }
    assert probe_cpu(status).model_dump() == {"attach": 2.0, "running": 1.5, "stopping": 0.75, "bpf": 0.25}
    status["probes"]["rtt"]["cpu_s"] = None  # still running: its CPU is not known yet
    assert probe_cpu(status).model_dump() == {"attach": None, "running": None, "stopping": None, "bpf": 0.25}
    assert probe_cpu(None).model_dump() == {"attach": None, "running": None, "stopping": None, "bpf": None}


def test_faults_are_recorded_once():
    faults = Faults()
    assert faults.add("llm", "probe rtt exited") and not faults.add("llm", "probe rtt exited")
    assert faults.add("agent-a", "probe rtt exited")
    assert [(f.node, f.what) for f in faults.items] == [("llm", "probe rtt exited"), ("agent-a", "probe rtt exited")]


def test_telemetry_slice_starts_at_the_offset_and_ends_at_the_last_full_line(tmp_path):
    source, target = tmp_path / "telemetry", tmp_path / "run" / "telemetry"
    source.mkdir()
    (source / "agent-a.jsonl").write_bytes(b'{"old":1}\n{"new":2}\n{"new":3}\n{"partial"')
    (source / "tool-db.jsonl").write_bytes(b'{"a":1}\n')
    (source / "new.jsonl").write_bytes(b'{"b":1}\n')
    copied = node_script.copy_telemetry(source, target, {"agent-a.jsonl": 10, "tool-db.jsonl": 8})
    assert (target / "agent-a.jsonl").read_bytes() == b'{"new":2}\n{"new":3}\n'
    assert (target / "tool-db.jsonl").read_bytes() == b""
    assert (target / "new.jsonl").read_bytes() == b'{"b":1}\n'
    assert copied["agent-a.jsonl"] == {"from": 10, "bytes": 20, "note": None}


def test_a_shrunk_telemetry_file_is_copied_whole_and_says_so(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "x.jsonl").write_bytes(b'{"a":1}\n')
    copied = node_script.copy_telemetry(tmp_path / "t", tmp_path / "out", {"x.jsonl": 500})
    assert copied["x.jsonl"]["from"] == 0 and "shrank" in copied["x.jsonl"]["note"]


def test_checksums_list_every_file_but_the_manifest(tmp_path):
    (tmp_path / "nodes" / "llm").mkdir(parents=True)
    (tmp_path / "nodes" / "llm" / "a.jsonl").write_bytes(b"abc")
    (tmp_path / "manifest.json").write_text("{}")
    files = checksums(tmp_path)
    assert files == {"nodes/llm/a.jsonl": {"bytes": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}}
    assert node_script.checksums(tmp_path)["nodes/llm/a.jsonl"] == files["nodes/llm/a.jsonl"]


def test_placed_services_come_from_the_config_files(tmp_path):
    (tmp_path / "agent-a.yaml").write_text("# managed\nnode: agent-a\nhost: 10.0.0.11\nport: 8101\npeers:\n  port: 1\n")
    (tmp_path / "tool-db.yaml").write_text("node: agent-b\nhost: 0.0.0.0\n")
    (tmp_path / "llm.env").write_text("HF_TOKEN=x\n")
    (tmp_path / "other.yaml").write_text("port: 9\n")
    placed = node_script.placed_services(str(tmp_path), "10.0.0.12", {"agent-a": 1, "tool-db": 8201})
    assert placed == {"agent-a": {"host": "10.0.0.11", "port": 8101}, "tool-db": {"host": "10.0.0.12", "port": 8201}}


def test_a_runs_files_go_to_the_ssh_user_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The controller pulls as the SSH user who ran the step through sudo; nobody else reads a run."""
    require_root("handing a run to the SSH user", ["chown", "chmod"])
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "rtt.jsonl").write_text("{}\n")
    monkeypatch.setenv("SUDO_USER", "nobody")
    node_script.hand_to_caller(tmp_path)
    for path in (tmp_path, tmp_path / "probes", tmp_path / "probes" / "rtt.jsonl"):
        info = path.stat()
        assert info.st_uid == pwd.getpwnam("nobody").pw_uid and info.st_mode & 0o077 == 0, path


def test_the_node_reads_the_llm_token_deploy_wrote(tmp_path: Path) -> None:
    assert node_script.llm_token(str(tmp_path)) is None
    (tmp_path / node_script.LLM_ENV).write_text(f"HF_TOKEN=x\n{TOKEN_ENV}=abc=def\n")
    assert node_script.llm_token(str(tmp_path)) == "abc=def"


def test_entry_and_missing_services_follow_the_preflight_answers():
    healthy = {"ok": True}
    checks = {
        "n1": {"services": {"agent-a": {"host": "10.0.0.11", "port": 8101, "health": healthy}}},
        "n2": {"services": {"baseline-gateway": {"host": "10.0.0.12", "port": 8301, "health": healthy}}},
    }
    assert services.entry(checks, "simple", "t" * 32).url("agent-a") == "http://10.0.0.11:8101"
    assert services.entry(checks, "baseline", "t" * 32) == Entry(
        {"baseline-gateway": "http://10.0.0.12:8301"}, "t" * 32
    )
    assert services.missing(checks, "multihop") == ["tool-db", "tool-synth", "agent-b", "llm"]
    assert services.missing(checks, "baseline") == ["baseline-order", "baseline-shipping", "tool-synth"]
    assert services.placed(checks, "baseline") == {"baseline-gateway": "n2"}  # what the run reaches and was found
    assert services.placed(checks, "simple") == {"agent-a": "n1"}


def test_node_script_runs_standalone_and_reports_errors_as_json(tmp_path):
    script = Path(node_script.__file__).read_text()
    ok = subprocess.run(
        [sys.executable, "-c", script, "cleanup", json.dumps({"run_dir": str(tmp_path / "x")})],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(ok.stdout) == {"ok": True, "result": {"removed": True}}
    bad = subprocess.run(
        [sys.executable, "-c", script, "status", json.dumps({"nope": 1})], capture_output=True, text=True, check=False
    )
    answer = json.loads(bad.stdout)
    assert not answer["ok"] and answer["error"].startswith("status: TypeError")


def test_manifest_is_written_whole(tmp_path):
    manifest = Manifest(
        run_id="r",
        scenario={"name": "s"},
        lab={},
        provider="nspawn",
        accelerator="container",
        image="i",
        started_at_ns=1,
    )
    data = json.loads(write_manifest(manifest, tmp_path).read_text())
    assert data["run_id"] == "r" and data["analysis"] is None and data["faults"] == []
    assert data["layout_version"] == LAYOUT_VERSION
    assert not list(tmp_path.glob("*.tmp"))


def test_run_id_is_utc_time_and_scenario():
    assert new_run_id("multihop", 0) == "19700101T000000Z-multihop"


def test_tasks_ask_about_the_deployed_database_whatever_their_seed():
    from workload.tasks import make_dataset

    dataset = make_dataset(1)
    shipped = {s.order_id for s in dataset.shipments}
    tasks = [p.task for p in plan(scenario(tasks={"count": 30, "seed": 9}))[0]]
    assert all(t.order_id in shipped for t in tasks if t.kind == "shipment_eta")
    assert tasks[0].task_id == "s9-t0000"


def test_a_runner_is_alive_only_while_it_runs():
    child = subprocess.Popen(["sleep", "30"])
    assert node_script.alive(child.pid)
    child.kill()
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: a zombie
    assert not node_script.alive(child.pid)
    child.wait()  # reaped: /proc/<pid> is gone, as when init reaps a runner between two looks
    assert not node_script.alive(child.pid)
    assert not node_script.alive(None)


DECODING_RUNNER = """
import json, signal, sys, time
out, decode_s = sys.argv[1], float(sys.argv[2])
stop = []
signal.signal(signal.SIGTERM, lambda *_: stop.append(time.monotonic()))
def status(state):
    with open(out + "/status.json.tmp", "w") as f:
        json.dump({"state": state, "updated_at_ns": time.time_ns()}, f)
    import os; os.replace(out + "/status.json.tmp", out + "/status.json")
status("running")
while not stop:
    time.sleep(0.05)
while time.monotonic() - stop[0] < decode_s:
    status("decoding")
    time.sleep(0.2)
"""


def _runner(tmp_path: Path, decode_s: float) -> subprocess.Popen:
    out = tmp_path / "run" / "probes"
    out.mkdir(parents=True)
    child = subprocess.Popen([sys.executable, "-c", DECODING_RUNNER, str(out), str(decode_s), "--run-id", "r"])
    (out / "runner.pid").write_text(str(child.pid))
    while not (out / "status.json").exists():
        pass
    return child


def test_a_stop_step_returns_while_the_runner_still_decodes_and_a_later_one_sees_it_stopped(tmp_path):
    child = _runner(tmp_path, decode_s=3)
    run_dir, telemetry = str(tmp_path / "run"), str(tmp_path / "telemetry")
    first = node_script.stop(run_dir, telemetry, {}, wait_s=1)
    assert first["runner"] == "stopping" and first["status"]["state"] == "decoding" and "files" not in first
    while (answer := node_script.stop(run_dir, telemetry, {}, wait_s=1))["runner"] == "stopping":
        pass
    assert answer["runner"] == "stopped" and "probes/status.json" in answer["files"]
    child.wait(timeout=5)


def test_a_runner_that_makes_no_progress_stopping_is_killed(tmp_path, monkeypatch):
    monkeypatch.setattr(node_script, "STOP_TIMEOUT_S", 1.0)
    child = _runner(tmp_path, decode_s=0)
    os.kill(child.pid, 19)  # SIGSTOP: it neither stops nor writes its status any more
    answer = node_script.stop(str(tmp_path / "run"), str(tmp_path / "telemetry"), {}, wait_s=10)
    assert answer["runner"].startswith("killed (made no progress")
    assert child.wait(timeout=5) == -9


def test_a_nodes_conditions_and_offloads_are_read_and_set_on_a_real_interface(tmp_path):
    require_root("offload steps", ["ip", "ethtool"])
    script = Path(node_script.__file__).read_text()
    ns = f"lab-offload-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for command in (
            "link add v0 type veth peer name v1",
            "addr add 10.250.0.1/24 dev v0",
            "link set v0 up",
            "link set v1 up",
        ):
            subprocess.run(["ip", "-n", ns, *command.split()], check=True)

        def step(name: str, **args: object) -> dict:
            argv = ["ip", "netns", "exec", ns, sys.executable, "-c", script, name, json.dumps(args)]
            answer = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
            assert answer["ok"], answer
            return answer["result"]

        found = step("conditions", address="10.250.0.1")
        assert found["iface"] == "v0" and found["cpus"] == os.cpu_count()
        assert set(found["cpu"]) == set(node_script.CPU_FIELDS) and found["cpu"]["idle"] > 0
        assert found["offload"]["gso"] == "on" and found["offload"]["tso"] == "on"  # a veth's defaults
        off = step("set_offload", address="10.250.0.1", state={"gso": "off", "tso": "off", "gro": "off"})
        assert off == {"gso": "off", "tso": "off", "gro": "off"}
        back = step("set_offload", address="10.250.0.1", state={"gso": "on", "tso": "on"})
        assert back["gso"] == back["tso"] == "on"
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_fill_disk_takes_every_block_root_could_write(tmp_path: Path) -> None:
    """fill_disk on an ext4 file system (a node's root): its 5 % root reserve is filled too, so
    the probes and services running as root meet a full disk as well."""
    require_root("filling a loop-mounted file system", ["mkfs.ext4", "mount", "umount"])
    image, mount = tmp_path / "disk.img", tmp_path / "mnt"
    image.write_bytes(b"")
    os.truncate(image, 16 << 20)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True)
    mount.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        before = os.statvfs(mount)
        assert before.f_bfree > before.f_bavail  # the reserve
        filled = node_script.fill(str(mount / "fill"))
        assert filled > before.f_bavail * before.f_frsize
        with pytest.raises(OSError, match="No space left"):
            (mount / "more").write_bytes(b"x" * (64 << 10))
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_stop_asked_on_a_full_disk_is_asked_again(tmp_path: Path) -> None:
    """The stop's first-asked time could not be written (a full disk left the file empty): the next
    stop still signals the runner and waits for it, instead of failing on the empty file."""
    (tmp_path / "stop_requested_ns").write_text("")
    runner = subprocess.Popen(["sleep", "60"])
    try:
        assert node_script._stop_runner(runner.pid, tmp_path, within_s=10) == "stopped"
    finally:
        runner.kill()
        runner.wait()
    assert int((tmp_path / "stop_requested_ns").read_text()) > 0
