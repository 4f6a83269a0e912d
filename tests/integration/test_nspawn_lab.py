"""The lab spine end to end on real systemd-nspawn containers: up, SSH with pinned keys,
traffic across the lab bridge, idempotency, teardown leaving nothing, a failed up cleaning up."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml

from lab import ssh, state
from lab.config import load_config
from lab.inventory import known_hosts_file
from lab.state import NAMES_DIR
from tests.conftest import lab_cli, write_lab
from vms import host, sysfs_copy, vfio
from vms.nspawn import SEED_DIR

pytestmark = pytest.mark.integration

NAME = "tn"
PREFIX = "10.79.0"
NODES = ("agent-a", "agent-b", "llm")


def leftovers(config: Path, name: str) -> list[str]:
    found = [f"process {pid}" for pid in host.processes_with("systemd-nspawn") if _is_ours(pid, name)]
    found += [
        f"link {link.name}"
        for link in Path("/sys/class/net").iterdir()
        if link.name.startswith((f"{name}-", f"vb-{name}-"))
    ]
    with open("/proc/self/mounts") as mounts:
        found += [f"mount {line.split()[1]}" for line in mounts if str(config.parent) in line.split()[1]]
    state = config.parent / ".lab"
    if state.exists():
        found.append(f"state dir {state}")
    if (config.parent / "inventory" / "hosts.yml").exists():
        found.append("inventory/hosts.yml")
    return found


def _is_ours(pid: int, name: str) -> bool:
    try:
        return f"--machine={name}-".encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


@pytest.fixture(scope="module")
def lab(tmp_path_factory, node_image):
    config = write_lab(tmp_path_factory.mktemp("nspawn"), NAME, PREFIX, provider="nspawn")
    result = lab_cli(config, "up")
    yield config, result
    lab_cli(config, "teardown", check=False)


def test_up_reports_and_writes_state_inventory_known_hosts(lab):
    config, result = lab
    assert "is up" in result.stdout and "nspawn (container)" in result.stdout
    state = json.loads((config.parent / ".lab" / "state.json").read_text())
    assert state["provider"] == "nspawn" and state["accelerator"] == "container"
    assert [n["name"] for n in state["nodes"]] == list(NODES)
    inventory = (config.parent / "inventory" / "hosts.yml").read_text()
    assert "never edit by hand" in inventory and f"{PREFIX}.12" in inventory
    known = (config.parent / ".lab" / "known_hosts").read_text().splitlines()
    assert len(known) == 3 and all(" ssh-ed25519 " in line for line in known)


def test_each_node_answers_ssh_with_its_pinned_key(lab):
    config, _ = lab
    for node in NODES:
        result = lab_cli(config, "ssh", node, "--", "hostname")
        assert result.stdout.strip() == node
        assert "Warning: Permanently added" not in result.stderr  # the key was known before first contact
    assert lab_cli(config, "ssh", "agent-a", "--", "exit", "7", check=False).returncode == 7


def test_host_keys_are_the_ones_the_lab_generated(lab):
    config, _ = lab
    pinned = (config.parent / ".lab" / "nodes" / "agent-b" / "ssh_host_ed25519_key.pub").read_text().split()[1]
    import subprocess

    scan = subprocess.run(["ssh-keyscan", "-t", "ed25519", f"{PREFIX}.12"], capture_output=True, text=True, timeout=30)
    served = scan.stdout.split()[2]
    assert served == pinned


def test_host_private_keys_are_root_only_on_the_host_and_in_the_nodes(lab):
    """A node's seed holds its SSH host private key: whoever reads it can impersonate the node."""
    config, _ = lab
    for node in NODES:
        base = config.parent / ".lab" / "nodes" / node
        seed = base / "upper" / SEED_DIR
        for path in (base / "ssh_host_ed25519_key", seed, *seed.iterdir()):
            info = path.stat()
            said = f"{path}: {stat.filemode(info.st_mode)}, uid {info.st_uid}"
            assert (stat.S_IMODE(info.st_mode) & 0o077, info.st_uid) == (0, 0), said
        modes = lab_cli(
            config,
            "ssh",
            node,
            "--",
            "sudo",
            "stat",
            "-c",
            "'%a %U %n'",
            f"/{SEED_DIR}/user-data",
            "/etc/ssh/ssh_host_ed25519_key",
        ).stdout.splitlines()
        assert [line.split()[:2] for line in modes] == [["600", "root"]] * 2, modes
        readable = (
            "sudo find /etc /var /run /home /tmp -type f -perm -o=r -exec grep -l 'PRIVATE KEY-----' {} +"
            " 2>/dev/null; true"
        )
        assert lab_cli(config, "ssh", node, "--", readable).stdout.split() == [], f"{node}: world-readable private keys"


def test_node_to_node_traffic_crosses_the_lab_bridge(lab):
    config, _ = lab
    veth = Path(f"/sys/class/net/vb-{NAME}-agent-a/statistics/rx_bytes")  # host side: what agent-a sent
    assert Path(f"/sys/class/net/vb-{NAME}-agent-a/master").resolve().name == f"{NAME}-br"
    before = int(veth.read_text())
    payload = 2_000_000
    listener = (
        f'python3 -c \'import socket;s=socket.create_server(("{PREFIX}.12",9099));c,_=s.accept();'
        "n=0\nwhile (b:=c.recv(65536)): n+=len(b)\nprint(n)'"
    )
    sender = (
        f'sleep 1; python3 -c \'import socket;c=socket.create_connection(("{PREFIX}.12",9099));'
        f"c.sendall(bytes({payload}));c.close()'"
    )
    import subprocess
    import sys

    receive = subprocess.Popen(
        [sys.executable, "-m", "lab", "--config", str(config), "ssh", "agent-b", "--", listener],
        stdout=subprocess.PIPE,
        text=True,
        cwd=config.parent,
    )
    lab_cli(config, "ssh", "agent-a", "--", sender)
    received, _ = receive.communicate(timeout=60)
    assert int(received.strip()) == payload
    assert int(veth.read_text()) - before >= payload


def test_containers_can_attach_ebpf_tracepoints(lab):
    config, _ = lab
    program = "tracepoint:sock:inet_sock_set_state { @n = count(); } interval:s:1 { exit(); }"
    result = lab_cli(config, "ssh", "llm", "--", "sudo", "bpftrace", "-e", f"'{program}'", check=False)
    assert result.returncode == 0, result.stderr
    assert "Attaching 2 probes" in result.stdout


def test_the_vfio_preflight_reads_a_nodes_sysfs_over_ssh_as_it_reads_this_hosts(lab, tmp_path):
    """A container node stands for a remote libvirt host: over real SSH (the lab's key and pinned host
    key), the copy of its sysfs (this host's, read-only in the container) holds a real PCI function as
    this host's sysfs shows it, and the preflight gives the same answer on both."""
    config, _ = lab
    lab_config = load_config(config)
    argv = ssh.ssh_argv(state.require(lab_config).node("agent-a"), known_hosts_file(lab_config))
    devices = Path("/sys/bus/pci/devices")
    # a function with a driver where there is one: its link is copied too
    found = sorted(devices.iterdir(), key=lambda d: (not (d / "driver").exists(), d.name)) if devices.is_dir() else []
    address = found[0].name if found else None
    addresses = [address] if address else ["0000:ff:1f.7"]
    copy = sysfs_copy.copy(argv, addresses, tmp_path / "copy")
    if address:
        here, there = devices / address, copy / "bus" / "pci" / "devices" / address
        driver = (here / "driver").resolve().name if (here / "driver").exists() else None
        assert (there / "class").read_text() == (here / "class").read_text()
        assert [p.resolve().name for p in (there / "driver", here / "driver") if p.exists()] in ([], [driver] * 2)

    def answer(root: Path) -> str:
        try:
            return "passed: " + " ".join(vfio.preflight(addresses, root, load_module=lambda: "not loaded here"))
        except vfio.VfioError as exc:
            return str(exc)

    assert answer(copy) == answer(Path("/sys"))


def test_second_up_is_idempotent(lab):
    config, _ = lab
    keys_before = (config.parent / ".lab" / "known_hosts").read_text()
    result = lab_cli(config, "up")
    assert result.stdout.count("already running") == 3
    assert (config.parent / ".lab" / "known_hosts").read_text() == keys_before
    assert lab_cli(config, "status").stdout.count("running") == 3


def test_a_second_lab_with_the_same_name_is_refused_and_leaves_the_first_running(lab, tmp_path):
    config, _ = lab
    other = write_lab(tmp_path, NAME, "10.85.0", provider="nspawn")
    for command in ("up", "teardown"):
        result = lab_cli(other, command, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert f"held by the lab in {config.parent}" in " ".join(result.stderr.split())
    assert not (tmp_path / ".lab").exists()
    assert lab_cli(config, "status").stdout.count("running") == 3


def test_teardown_leaves_nothing_and_twice_is_a_no_op(lab):
    config, _ = lab
    # llm leaves lab.yaml while it runs (renamed; a lab needs an llm node): teardown still stops
    # it and unmounts its overlay first
    edited = yaml.safe_load(config.read_text())
    edited["nodes"][2]["name"] = "llm-next"
    config.write_text(yaml.safe_dump(edited, sort_keys=False))
    result = lab_cli(config, "teardown")
    assert "container tn-agent-a" in result.stdout and "bridge tn-br" in result.stdout
    assert "container tn-llm" in result.stdout and "overlay mount" in result.stdout
    assert leftovers(config, NAME) == []
    assert not (NAMES_DIR / NAME).exists()  # the name is free for another lab
    assert "nothing to remove" in lab_cli(config, "teardown").stdout


def test_a_failed_up_cleans_up_what_it_created(tmp_path, node_image):
    config = write_lab(tmp_path, "tf", "10.80.0", provider="nspawn", boot_timeout_s=0.2)
    result = lab_cli(config, "up", check=False)
    assert result.returncode == 1
    assert "did not answer SSH" in result.stderr and "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())  # rich wraps long lines
    assert "its console ends:" in message and f"(console log: {config.parent / '.lab' / 'logs'}" in message
    assert [item for item in leftovers(config, "tf") if not item.startswith("state dir")] == []
    assert (config.parent / ".lab" / "logs").is_dir()  # console logs stay to show why
    lab_cli(config, "teardown")
    assert leftovers(config, "tf") == []


def test_a_node_that_fails_after_its_overlay_is_mounted_is_unmounted(tmp_path, node_image):
    config = write_lab(tmp_path, "tg", "10.84.0", provider="nspawn")
    # a file where the seed's directory goes: agent-a fails once its overlay is mounted, before it starts
    blocker = config.parent / ".lab" / "nodes" / "agent-a" / "upper" / Path(SEED_DIR).parent
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a directory")
    result = lab_cli(config, "up", check=False)
    assert result.returncode == 1 and "up failed; removing what this run created" in result.stdout
    assert [item for item in leftovers(config, "tg") if not item.startswith("state dir")] == []
    lab_cli(config, "teardown")
    assert leftovers(config, "tg") == []
