"""The libvirt provider end to end on real VMs under TCG: up in parallel, SSH with pinned keys,
node-to-node traffic on the lab network, the baseline deployed and run with the probes on the guest
kernel (RTT from its kprobe), idempotency (running, stopped, changed), teardown leaving nothing in
libvirt, and a failed up cleaning up after itself."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import libvirt
import pandas as pd
import pytest
import yaml

import analysis
from lab import ssh, state
from lab.config import load_config
from tests.analysis.checks import assert_baseline_matches_the_call_graph, assert_flows_agree_with_handshakes
from tests.conftest import lab_cli, write_lab
from tests.integration.conftest import playbook
from tests.integration.test_experiment import assert_files_intact
from tests.integration.test_faults import faults_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

NAME = "tv"
PREFIX = "10.78.0"
NODES = ("agent-a", "agent-b", "llm")
MEMORY = {"agent-a": 640, "agent-b": 1024, "llm": 768}  # agent-b: PostgreSQL and the baseline chain


def write_vm_lab(directory: Path, name: str, prefix: str, **overrides: object) -> Path:
    """Three small TCG VMs, so they fit beside each other on a two-core CI runner; booting three
    emulated VMs on two busy cores can take minutes, hence the long boot timeout."""
    nodes = [
        {"name": node, "groups": groups, "address": f"{prefix}.{11 + index}", "memory_mb": MEMORY[node]}
        for index, (node, groups) in enumerate(zip(NODES, (["agents"], ["agents", "tools"], ["llm"]), strict=True))
    ]
    return write_lab(
        directory,
        name,
        prefix,
        **{"provider": "libvirt", "accelerator": "tcg", "nodes": nodes, "boot_timeout_s": 400, **overrides},
    )


def leftovers(name: str) -> list[str]:
    """Everything in libvirt (and on the host) that carries the lab's prefix."""
    conn = libvirt.open("qemu:///system")
    prefix = f"{name}-"
    found = [f"domain {d.name()}" for d in conn.listAllDomains(0) if d.name().startswith(prefix)]
    found += [f"network {n.name()}" for n in conn.listAllNetworks(0) if n.name().startswith(prefix)]
    for pool in conn.listAllStoragePools(0):
        if pool.name().startswith(prefix):
            found.append(f"pool {pool.name()}")
        if pool.isActive():
            found += [f"volume {v.name()}" for v in pool.listAllVolumes(0) if v.name().startswith(prefix)]
    found += [f"link {link.name}" for link in Path("/sys/class/net").iterdir() if link.name.startswith(prefix)]
    if Path(f"/var/lib/libvirt/images/{name}").exists():
        found.append(f"directory /var/lib/libvirt/images/{name}")
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory, node_image):
    config = write_vm_lab(tmp_path_factory.mktemp("libvirt"), NAME, PREFIX)
    started = time.monotonic()
    result = lab_cli(config, "up")
    print(f"lab up (libvirt, tcg): {time.monotonic() - started:.1f} s")
    yield config, result
    lab_cli(config, "teardown", check=False)


def test_up_boots_three_tcg_vms_and_records_the_accelerator(lab):
    config, result = lab
    assert "is up" in result.stdout and "libvirt (tcg)" in result.stdout
    assert "LLM backend: llamacpp" in result.stdout
    current = state.require(load_config(config))
    assert current.provider == "libvirt" and current.accelerator == "tcg"
    assert [(n.name, n.accelerator) for n in current.nodes] == [(node, "tcg") for node in NODES]


def test_each_vm_runs_a_command_and_reaches_the_others_on_the_lab_network(lab):
    config, _ = lab
    current = state.require(load_config(config))
    for node in current.nodes:
        others = [n.address for n in current.nodes if n is not node]
        pings = " && ".join(f"ping -c1 -W5 {address} >/dev/null" for address in others)
        code, out, err = ssh.run(node, f"hostname && ip -4 -br addr show lab0 && {pings} && echo reached")
        assert code == 0, err
        lines = out.split("\n")
        assert lines[0] == node.name and f"{node.address}/24" in lines[1] and "reached" in out


def test_vms_reach_nothing_beyond_the_lab(lab):
    config, _ = lab
    node = state.require(load_config(config)).node("agent-a")
    _, out, _ = ssh.run(node, "ip route; ping -c1 -W2 1.1.1.1 >/dev/null 2>&1 || echo unreachable")
    assert "default" not in out and "unreachable" in out


# What a baseline run needs on every node (deploy.yml's tags): no LLM, no agents, so CI deploys in
# minutes on TCG what the whole lab takes a quarter of an hour for. mcp_tools: tool-synth answers the
# baseline's parcel and carrier lookups (the REST twins of its MCP tools).
BASELINE_TAGS = "common,collectors,ebpf_tools,mcp_tools,baseline"


@pytest.fixture(scope="module")
def deployed(lab):
    config, _ = lab
    started = time.monotonic()
    deploy = playbook(config, "--tags", BASELINE_TAGS)
    assert deploy.returncode == 0, (
        f"deploy.yml exited {deploy.returncode}:\n{deploy.stdout[-6000:]}\n{deploy.stderr[-3000:]}"
    )
    print(f"deploy ({BASELINE_TAGS}) on TCG VMs: {time.monotonic() - started:.0f} s")
    return config


def vm_experiment(config: Path, directory: Path, name: str, **keys: object) -> tuple[Path, dict]:
    """A baseline scenario `name` run on the VMs; its run directory and manifest."""
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"workload": "baseline", "task_timeout_s": 60, **keys}))
    started = time.monotonic()
    lab_cli(config, "experiment", str(path), timeout=1800)
    print(f"{name} on TCG VMs: {time.monotonic() - started:.0f} s")
    run = max((config.parent / "runs").glob(f"*-{name}"))
    return run, json.loads((run / "manifest.json").read_text())


FILLED = "agent-b"  # PostgreSQL and the baseline's order and shipping services write there


@pytest.fixture(scope="module")
def filled_run(deployed, tmp_path_factory):
    """agent-b's disk full for 12 s from 4 s into a baseline run of about 25 s (the packet capture and the
    connection probes on, which write the most)."""
    return vm_experiment(
        deployed,
        tmp_path_factory.mktemp("scenarios"),
        "vm-disk-full",
        tasks={"count": 60, "seed": 2},
        load={"concurrency": 2},
        probes=["lifetime", "pcap"],
        inject=[{"kind": "fill_disk", "node": FILLED, "at_s": 4, "for_s": 12}],
    )


@pytest.fixture(scope="module")
def baseline_run(deployed, filled_run, tmp_path_factory):
    """The baseline run with every probe on the three TCG VMs, after the disk-full run (so it is also
    the run after a fault, which must be clean), then analysed."""
    return vm_experiment(
        deployed,
        tmp_path_factory.mktemp("scenarios"),
        "vm-baseline",
        tasks={"count": 20, "seed": 1},
        load={"concurrency": 2},
        warmup=2,
    )


@pytest.mark.timeout(3000)
def test_a_full_disk_on_a_vm_is_named_and_costs_only_what_it_could_not_write(filled_run):
    run, manifest = filled_run
    [filled] = manifest["injected"]
    assert filled["error"] is None and filled["done"]["filled_bytes"] > 0 and filled["done_ns"], filled
    assert any(w.startswith("injected fill_disk for 12 s at 4 s") for w in faults_of(manifest, FILLED))
    results = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert all(r["error"] for r in results if not r["ok"]), [r for r in results if not r["ok"]]
    for node in NODES:  # every node's records pulled and whole, the filled node's too
        assert_files_intact(run, manifest["files"], f"nodes/{node}/")
    # Whether a probe's output was lost depends on what arrived while the disk was full beyond what the
    # runner holds until there is room (and on ext4, what fits in a file's last block needs no room):
    # a probe met the full disk and went on, and any loss is named
    probes = manifest["probes"][FILLED]
    assert all(p["state"] == "stopped" for p in probes.values()), probes
    assert any("No space left on device" in (p["error"] or "") for p in probes.values()), probes
    for name in (name for name, p in probes.items() if p["unwritten_bytes"]):
        assert any(w.startswith(f"probe {name} could not write") for w in faults_of(manifest, FILLED))
    pcap = run / "nodes" / FILLED / "probes" / "pcap-lab0.pcap"
    read = subprocess.run(["tcpdump", "-n", "-r", str(pcap)], capture_output=True, text=True)
    assert read.returncode == 0 and "truncated" not in read.stderr, read.stderr  # whole to its end
    report = (run / "report.html").read_text()  # analysed: the fault and what it cost are in the report
    assert "fill_disk" in report and "No space left on device" in report


@pytest.mark.timeout(3000)
def test_a_baseline_experiment_runs_on_the_vms(baseline_run):
    run, manifest = baseline_run
    assert manifest["provider"] == "libvirt" and manifest["accelerator"] == "tcg"
    assert manifest["tasks"]["total"] == manifest["tasks"]["ok"] == 20, manifest["tasks"]
    assert manifest["faults"] == [], manifest["faults"]
    assert manifest["versions"].get("llm") is None and manifest["llm_speed"] is None  # no LLM is deployed or needed
    for node in NODES:
        for name, probe in manifest["probes"][node].items():
            assert probe["started"] and probe["state"] == "stopped" and probe["invalid_values"] == 0, (
                node,
                name,
                probe,
            )
    # Debian's 6.1 guest kernel has kprobes, but its tcp_probe tracepoint has no socket pointer to
    # filter by namespace: the RTT windows come from the kprobe program there (this host's kernel has
    # no kprobes, so only a VM runs it)
    status = json.loads((run / "nodes" / "agent-b" / "probes" / "status.json").read_text())
    assert status["detection"]["kprobes"]["available"], status["detection"]["kprobes"]
    rtt = manifest["probes"]["agent-b"]["rtt"]
    assert rtt["source"] == "bpftrace kprobe:tcp_rcv_established" and rtt["records"] > 0, rtt
    windows = [
        json.loads(line) for line in (run / "nodes" / "agent-b" / "probes" / "rtt.jsonl").read_text().splitlines()
    ]
    assert len(windows) == rtt["records"] and all(w["srtt_min_us"] <= w["srtt_us"] <= w["srtt_max_us"] for w in windows)


def test_the_vm_clocks_follow_the_controller(baseline_run):
    """The controller serves NTP on the lab network (vms/timeserver.py): the guests' offsets are
    milliseconds, not the -776 ms a TCG guest kept from its boot without it."""
    _, manifest = baseline_run
    for node in NODES:
        start = manifest["clock_offsets"][node]["start"]
        print(f"clock {node} at run start: {start['offset_ns'] / 1e6:.2f} ± {start['uncertainty_ns'] / 1e6:.2f} ms")
        assert abs(start["offset_ns"]) < 20_000_000, start


def test_the_vm_run_is_analysed_without_problems(baseline_run):
    run, _ = baseline_run
    summary = json.loads((run / "analysis.json").read_text())
    assert summary["problems"] == [], summary["problems"]
    # every node's closed connections: the driver's end on agent-a, where the baseline's entry runs (the
    # pooled ones inside the chain may outlive the run)
    lifetimes = [
        json.loads(line)
        for node in NODES
        for line in (run / "nodes" / node / "probes" / "lifetime.jsonl").read_text().splitlines()
    ]
    assert lifetimes and all(isinstance(r["rx_bytes"], int) and "invalid" not in r for r in lifetimes)
    rtt = pd.read_parquet(run / "tables" / "rtt.parquet")
    assert (rtt["node"] == "agent-b").any() and rtt["srtt_us"].gt(0).all()
    result = analysis.analyze_run(run)
    assert_baseline_matches_the_call_graph(result)
    assert_flows_agree_with_handshakes(result, sorted((run / "nodes").glob("*/probes/pcap-*.pcap")))


def test_up_again_leaves_running_vms_alone_starts_stopped_ones_and_reports_changes(lab):
    config, _ = lab
    conn = libvirt.open("qemu:///system")
    conn.lookupByName(f"{NAME}-agent-b").destroy()
    data = yaml.safe_load(config.read_text())
    data["nodes"][2]["memory_mb"] = 896
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        result = lab_cli(config, "up")
    finally:
        data["nodes"][2]["memory_mb"] = MEMORY["llm"]
        config.write_text(yaml.safe_dump(data, sort_keys=False))
    out = " ".join(result.stdout.split())  # rich wraps long lines
    assert "agent-a: already running" in out and "llm: already running" in out
    assert "agent-b: was defined but stopped; started" in out
    assert "llm: lab.yaml changed since the VM was defined (memory_mb: 768 -> 896)" in out
    assert len(conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)) >= 3
    assert re.search(r"agent-b: SSH ready \(\d+\.\d s\)", out)


def test_teardown_removes_everything_with_the_lab_prefix(lab):
    config, _ = lab
    result = lab_cli(config, "teardown")
    out = " ".join(result.stdout.split())
    for item in (
        "domain tv-agent-a",
        "domain tv-llm",
        "volume tv-llm.qcow2",
        "volume tv-llm-seed.iso",
        "storage pool tv-pool",
        "network tv-net",
        "chronyd serving NTP on 10.78.0.1",
    ):
        assert item in out
    assert leftovers(NAME) == []
    assert "nothing to remove" in lab_cli(config, "teardown").stdout


def test_a_failed_up_removes_what_it_created(tmp_path, node_image):
    config = write_vm_lab(tmp_path, "tw", "10.81.0", boot_timeout_s=1)
    result = lab_cli(config, "up", check=False)
    assert result.returncode == 1
    assert "did not answer SSH" in result.stderr and "Traceback" not in result.stderr
    assert leftovers("tw") == []
    assert (config.parent / ".lab" / "logs").is_dir()  # console logs stay to show why
    lab_cli(config, "teardown")
    assert leftovers("tw") == []
