"""The experiment's steps on a lab node: run as root with the node's python3 (stdlib only) as
`python3 -c <this file> STEP JSON-ARGS`; each step prints one JSON object on stdout.

The controller sends this file's text with every call (one SSH round trip per step), so the
node needs nothing installed for it besides python3, tc and the collectors deploy put there.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

FINAL_STATES = ("running", "stopped", "failed")
START_TIMEOUT_S = 330.0  # the runner's own attach timeout (collectors.runner.ATTACH_TIMEOUT_S) and then some
STOP_TIMEOUT_S = 30.0
# detect compiles a bpftrace dry run per probe: over 60 s on a TCG guest while the host is busy
DETECT_TIMEOUT_S = 300.0
STOP_STEP_S = 60.0  # one stop step waits this long at most; the controller asks again while the runner decodes
UNSHAPED = "10gbit"
# This node's run directory, the shape of nodes/<node>/ once pulled. The module that says the layout
# (lab/runlayout.py) cannot be imported here; tests/lab/test_runlayout.py holds these names to it.
PROBES = "probes"
STATUS = "status.json"
RUNNER_PID = "runner.pid"
RUNNER_LOG = "logs/runner.log"
TELEMETRY = "telemetry"
LLM_ENV = "llm.env"
"""The LLM server's environment file in the config directory (roles/llm_server)."""


def _run(argv: list[str], timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)  # type: ignore[call-overload]


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def lab_interface(address: str) -> str:
    """The interface that holds the node's lab address (host0 in a container, e.g. enp1s0 in a VM)."""
    for line in _run(["ip", "-o", "-4", "addr", "show"]).stdout.splitlines():
        fields = line.split()
        if f"{address}/" in line:
            return fields[1].split("@")[0]
    raise RuntimeError(f"no interface holds {address}")


def _version(argv: list[str]) -> str:
    try:
        result = _run(argv)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (
        _first_line(result.stdout or result.stderr)
        if result.returncode == 0
        else f"unavailable ({_first_line(result.stderr)})"
    )


# The client and server libraries whose defaults shape the traffic (connection reuse, keep-alive,
# MCP sessions): openai 2.54 under the agents made every streamed LLM answer cost a connection.
LIBRARIES = (
    "agentic-lab",
    "openai",
    "httpx",
    "httpcore",
    "mcp",
    "langchain-openai",
    "langchain-mcp-adapters",
    "langgraph",
    "uvicorn",
    "starlette",
)
LIBRARY_VERSIONS = (
    "import importlib.metadata as m, json, sys\n"
    "def v(n):\n    try:\n        return m.version(n)\n    except m.PackageNotFoundError:\n        return None\n"
    "print(json.dumps({n: v(n) for n in sys.argv[1:]}))"
)


def _libraries(python: str | None) -> dict[str, str | None]:
    """The version of each of LIBRARIES in the services' venv (None: not installed)."""
    if python is None:
        return {}
    try:
        result = _run([python, "-c", LIBRARY_VERSIONS, *LIBRARIES])
        return json.loads(result.stdout) if result.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}


def _get(url: str, token: str | None = None) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return {"ok": True, "status": response.status, "body": json.loads(response.read() or b"null")}
    except urllib.error.HTTPError as exc:
        return {"ok": False, "status": exc.code, "body": exc.read(500).decode(errors="replace")}
    except urllib.error.URLError as exc:
        return {"ok": False, "status": None, "body": str(exc.reason)}
    except (OSError, ValueError) as exc:
        return {"ok": False, "status": None, "body": f"{type(exc).__name__}: {exc}"}


def _health(address: str, port: int, path: str) -> dict:
    """GET the service on the lab address, then on loopback (a service may bind either); a failure
    is reported as the lab address saw it."""
    answer = _get(f"http://{address}:{port}{path}")
    if not answer["ok"] and (local := _get(f"http://127.0.0.1:{port}{path}"))["ok"]:
        return local
    return answer


def llm_token(config_dir: str) -> str | None:
    """The lab's bearer token from the LLM server's environment file (deploy writes it, 0600), if any."""
    try:
        lines = (Path(config_dir) / LLM_ENV).read_text().splitlines()
    except OSError:
        return None
    return next((line.split("=", 1)[1] for line in lines if line.startswith("LAB_API_TOKEN=")), None)


def service_config(path: Path) -> dict[str, str]:
    """The top-level `key: value` lines of a service's YAML config (enough for host and port)."""
    values = {}
    for line in path.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#") and ":" in line:
            key, value = line.split(":", 1)
            values[key.strip()] = value.strip().strip("'\"")
    return values


def placed_services(config_dir: str, address: str, known: dict[str, int]) -> dict[str, dict]:
    """The workload services deploy put on this node: {service: {host, port}} from their config files."""
    placed = {}
    for path in sorted(Path(config_dir).glob("*.yaml")):
        if path.stem in known:
            config = service_config(path)
            host = config.get("host", address)
            placed[path.stem] = {
                "host": address if host in ("0.0.0.0", "::", "") else host,
                "port": int(config.get("port") or known[path.stem]),
            }
    return placed


def _detect(collectors: str) -> tuple[dict | None, str | None]:
    try:
        result = _run([collectors, "detect"], timeout=DETECT_TIMEOUT_S)
    except OSError as exc:
        return None, str(exc)
    if result.returncode != 0:
        return None, _first_line(result.stderr) or f"exit {result.returncode}"
    return json.loads(result.stdout), None


def preflight(
    address: str,
    config_dir: str,
    known: dict[str, int],
    llm_port: int | None,
    collectors: str,
    venvs: list[str],
    runs: str,
) -> dict:
    """Versions, the lab interface, what the probes can attach to, where each service is and its health.
    A probe runner still running from an earlier run (its controller died) is stopped first: it would
    load the node during this one; its files stay where they are."""
    stale = stop_stale_runners(runs)
    detection, detect_error = _detect(collectors)
    services = placed_services(config_dir, address, known)
    for service in services.values():
        service["health"] = _health(service["host"], service["port"], "/healthz")
    if llm_port is not None:
        services["llm"] = {
            "host": address,
            "port": llm_port,
            "health": _health(address, llm_port, "/health"),
            "models": _get(f"http://{address}:{llm_port}/v1/models", llm_token(config_dir)),
        }
    python = next((v for v in venvs if Path(v).exists()), None)
    return {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "bpftrace": _version(["bpftrace", "--version"]),
        "tcpdump": _version(["tcpdump", "--version"]),
        "workload": _version([python, "-c", "import importlib.metadata as m; print(m.version('agentic-lab'))"])
        if python
        else "not installed",
        "libraries": _libraries(python),
        "iface": lab_interface(address),
        "probes": detection["probes"] if detection else None,
        "detect_error": detect_error,
        "services": services,
        "stale_runners": stale,
    }


CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
OFFLOADS = {
    "gso": "generic-segmentation-offload",
    "tso": "tcp-segmentation-offload",
    "gro": "generic-receive-offload",
}


def cpu_times() -> dict[str, int]:
    """The kernel's CPU time counters over all CPUs (USER_HZ ticks; /proc/stat's `cpu` line)."""
    with open("/proc/stat") as stat:
        values = stat.readline().split()[1:]
    return {name: int(value) for name, value in zip(CPU_FIELDS, values[: len(CPU_FIELDS)], strict=True)}


def offloads(iface: str) -> dict[str, str]:
    """GSO, TSO and GRO of `iface` as ethtool reports them ("on", "off", "on [fixed]", ...): with any
    on, the capture holds packets larger than the wire's (coalesced before or after tcpdump sees them)."""
    try:
        shown = _run(["ethtool", "-k", iface], timeout=20)
    except OSError:
        return {key: "unknown: no ethtool" for key in OFFLOADS}
    features = dict(line.strip().split(": ", 1) for line in shown.stdout.splitlines() if ": " in line)
    return {key: features.get(name, f"unknown: {_first_line(shown.stderr)}") for key, name in OFFLOADS.items()}


def conditions(address: str) -> dict:
    """What can distort this node's timing and capture: its CPU counters (the steal column is time a
    hypervisor ran something else), CPUs, load and the lab interface's offloads."""
    iface = lab_interface(address)
    return {
        "cpu": cpu_times(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg()[0],
        "iface": iface,
        "offload": offloads(iface),
    }


def set_offload(address: str, state: dict[str, str]) -> dict:
    """Turn GSO/TSO/GRO of the lab interface on or off ({"gso": "off", ...}); returns them as they are now."""
    iface = lab_interface(address)
    args = [word for key, value in state.items() if key in OFFLOADS for word in (key, value.split()[0])]
    result = _run(["ethtool", "-K", iface, *args], timeout=20)
    if result.returncode != 0:
        raise RuntimeError(f"ethtool -K {iface}: {_first_line(result.stderr) or f'exit {result.returncode}'}")
    return offloads(iface)


def telemetry_sizes(telemetry: str) -> dict[str, int]:
    directory = Path(telemetry)
    return {p.name: p.stat().st_size for p in sorted(directory.glob("*.jsonl"))} if directory.is_dir() else {}


def _status(out: Path) -> dict | None:
    try:
        return json.loads((out / STATUS).read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int | None) -> bool:
    """Running and not a zombie. The runner is init's child once started, so it can be reaped at any moment."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _is_runner(pid: int | None) -> bool:
    try:
        return alive(pid) and "--run-id" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split(
            "\0"
        )
    except OSError:
        return False


def _stop_runner(pid: int, out: Path, within_s: float = math.inf) -> str:
    """SIGTERM the runner (it stops its probes so they flush, then decodes their output) and wait;
    SIGKILL once it has made no progress (status.json unchanged; decoding rewrites it as it goes)
    for STOP_TIMEOUT_S since the stop was first asked. "stopping" when it still makes progress
    after `within_s`: the caller asks again, so no single SSH call waits on a long decode."""
    os.kill(pid, signal.SIGTERM)  # the runner only sets its stop flag: asking again is harmless
    first = _first_asked(out / "stop_requested_ns")
    until = time.monotonic() + within_s
    while alive(pid):
        progress = max(first, (_status(out) or {}).get("updated_at_ns") or 0)
        if time.time_ns() - progress > STOP_TIMEOUT_S * 1e9:
            os.kill(pid, signal.SIGKILL)
            return f"killed (made no progress stopping for {STOP_TIMEOUT_S:.0f} s)"
        if time.monotonic() > until:
            return "stopping"
        time.sleep(0.2)
    return "stopped"


def _first_asked(asked: Path) -> int:
    """When the stop was first asked (ns), kept in `asked` for the calls that ask again; now where
    it was never written, or could not be (a full disk leaves the file empty)."""
    try:
        return int(asked.read_text())
    except (OSError, ValueError):
        now = time.time_ns()
        with contextlib.suppress(OSError):
            asked.write_text(str(now))
        return now


def stop_stale_runners(runs: str) -> list[dict]:
    stale = []
    for pid_file in sorted(Path(runs).glob(f"*/{PROBES}/{RUNNER_PID}")):
        pid = _pid(pid_file.parent)
        if pid is not None and _is_runner(pid):
            stale.append(
                {"run_dir": str(pid_file.parent.parent), "pid": pid, "outcome": _stop_runner(pid, pid_file.parent)}
            )
    return stale


def _pid(out: Path) -> int | None:
    try:
        return int((out / RUNNER_PID).read_text())
    except (OSError, ValueError):
        return None


def start(
    run_dir: str,
    node: str,
    address: str,
    run_id: str,
    probes: list[str],
    collectors: str,
    telemetry: str,
    rtt: tuple[int, int],
    bpf_stats: bool = False,
) -> dict:
    """Note where each service's telemetry file ends, start the runner detached, wait until it runs.

    The capture covers the lab interface and loopback: a node's services that call each other
    by the node's own address talk over lo, and their packets belong to the run too."""
    out = Path(run_dir) / PROBES
    (out / RUNNER_LOG).parent.mkdir(parents=True, exist_ok=True)
    offsets = telemetry_sizes(telemetry)
    with open(out / RUNNER_LOG, "ab") as log:
        runner = subprocess.Popen(
            [
                collectors,
                "run",
                "--node",
                node,
                "--run-id",
                run_id,
                "--out",
                str(out),
                "--probes",
                ",".join(probes),
                "--iface",
                lab_interface(address),
                "--iface",
                "lo",
                "--rtt-interval-ms",
                str(rtt[0]),
                "--rtt-max-per-s",
                str(rtt[1]),
                *(["--bpf-stats"] if bpf_stats else []),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    status = None
    while time.monotonic() < deadline and runner.poll() is None:
        status = _status(out)
        if status and status.get("state") in FINAL_STATES:
            break
        time.sleep(0.2)
    status = _status(out)
    error = None
    if runner.poll() is not None:
        error = f"the runner exited {runner.returncode}: {_tail(out / RUNNER_LOG)}"
    elif not status or status.get("state") != "running":
        error = f"the runner did not reach 'running' within {START_TIMEOUT_S:.0f} s"
    return {"pid": runner.pid, "offsets": offsets, "status": status, "error": error}


def _tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""


def status(run_dir: str) -> dict:
    out = Path(run_dir) / PROBES
    return {"status": _status(out), "alive": alive(_pid(out))}


def stop(run_dir: str, telemetry: str, offsets: dict[str, int], wait_s: float = STOP_STEP_S) -> dict:
    """SIGTERM the runner and wait up to `wait_s` for it to stop (runner "stopping": ask again);
    once it stopped, copy this run's telemetry and list every file with its sha256."""
    root = Path(run_dir)
    out = root / PROBES
    pid = _pid(out)
    outcome = _stop_runner(pid, out, wait_s) if pid is not None and alive(pid) else "not running"
    if outcome == "stopping":
        return {"runner": outcome, "status": _status(out)}
    copied = copy_telemetry(Path(telemetry), root / TELEMETRY, offsets)
    hand_to_caller(root)
    return {"runner": outcome, "status": _status(out), "telemetry": copied, "files": checksums(root)}


def hand_to_caller(root: Path) -> None:
    """The run's files to the SSH user who ran this step through sudo (the controller pulls them over
    SFTP as that user), for nobody else's eyes: the run's traffic, ports and timings stay private."""
    if owner := os.environ.get("SUDO_USER"):
        _run(["chown", "-R", f"{owner}:", str(root)])
    _run(["chmod", "-R", "u+rwX,go-rwx", str(root)])


def copy_telemetry(source: Path, target: Path, offsets: dict[str, int]) -> dict[str, dict]:
    """Each service file from its size at run start to its last complete line now."""
    target.mkdir(parents=True, exist_ok=True)
    copied = {}
    for path in sorted(source.glob("*.jsonl")) if source.is_dir() else []:
        start = offsets.get(path.name, 0)
        data = path.read_bytes()
        note = None
        if len(data) < start:
            start, note = 0, "the file shrank since the run started (rotated?); copied all of it"
        chunk = data[start:]
        chunk = chunk[: chunk.rfind(b"\n") + 1]
        (target / path.name).write_bytes(chunk)
        copied[path.name] = {"from": start, "bytes": len(chunk), "note": note}
    return copied


def file_digest(path: Path) -> tuple[int, str]:
    """Size and sha256, as the manifest lists every file and the pull checks it."""
    with open(path, "rb") as f:
        return os.fstat(f.fileno()).st_size, hashlib.file_digest(f, "sha256").hexdigest()


def checksums(root: Path) -> dict[str, dict]:
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        size, digest = file_digest(path)
        files[str(path.relative_to(root))] = {"bytes": size, "sha256": digest}
    return files


def tc_commands(iface: str, links: list[dict], netem: bool) -> list[list[str]]:
    """htb at the root: class 1:1 unshaped, one class per impaired link (rate by htb, delay/loss by
    a netem leaf where the kernel has netem), u32 filters sending each peer's traffic to its class."""
    catch_all = any(link["to_address"] is None for link in links)
    tc = ["tc", "qdisc", "replace", "dev", iface, "root", "handle", "1:", "htb", "default", "2" if catch_all else "1"]
    commands = [tc, ["tc", "class", "add", "dev", iface, "parent", "1:", "classid", "1:1", "htb", "rate", UNSHAPED]]
    for index, link in enumerate(links, start=2):
        rate = f"{link['rate_mbit']:g}mbit" if link["rate_mbit"] else UNSHAPED
        commands.append(
            [
                "tc",
                "class",
                "add",
                "dev",
                iface,
                "parent",
                "1:",
                "classid",
                f"1:{index}",
                "htb",
                "rate",
                rate,
                "ceil",
                rate,
            ]
        )
        if netem and (link["delay_ms"] or link["loss_pct"]):
            commands.append(
                [
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    iface,
                    "parent",
                    f"1:{index}",
                    "handle",
                    f"{index}0:",
                    "netem",
                    *netem_args(link),
                ]
            )
        if link["to_address"] is not None:
            commands.append(
                [
                    "tc",
                    "filter",
                    "add",
                    "dev",
                    iface,
                    "parent",
                    "1:",
                    "protocol",
                    "ip",
                    "prio",
                    "1",
                    "u32",
                    "match",
                    "ip",
                    "dst",
                    f"{link['to_address']}/32",
                    "flowid",
                    f"1:{index}",
                ]
            )
    return commands


def netem_args(link: dict) -> list[str]:
    args = []
    if link["delay_ms"]:
        args += ["delay", f"{link['delay_ms']:g}ms"] + ([f"{link['jitter_ms']:g}ms"] if link["jitter_ms"] else [])
    if link["loss_pct"]:
        args += ["loss", f"{link['loss_pct']:g}%"]
    return args


def _remove_root_qdisc(iface: str) -> subprocess.CompletedProcess[str]:
    return _run(["tc", "qdisc", "del", "dev", iface, "root"])


def has_netem(iface: str) -> bool:
    """Try it: a netem qdisc on the interface, removed at once."""
    added = _run(["tc", "qdisc", "add", "dev", iface, "root", "handle", "1:", "netem", "delay", "0ms"])
    if added.returncode == 0:
        _remove_root_qdisc(iface)
    return added.returncode == 0


def impair(address: str, links: list[dict]) -> dict:
    iface = lab_interface(address)
    _remove_root_qdisc(iface)
    netem = has_netem(iface)
    for argv in tc_commands(iface, links, netem):
        result = _run(argv)
        if result.returncode != 0:
            _remove_root_qdisc(iface)
            raise RuntimeError(f"`{' '.join(argv)}` failed: {_first_line(result.stderr)}")
    return {"iface": iface, "netem": netem, "qdisc": _run(["tc", "qdisc", "show", "dev", iface]).stdout.strip()}


def unimpair(address: str) -> dict:
    iface = lab_interface(address)
    result = _remove_root_qdisc(iface)
    return {"iface": iface, "removed": result.returncode == 0}


FILL = "/var/lib/lab/fault-fill"
"""fill_disk's file, on the file system that holds the node's lab state and runs."""


def inject(kind: str, address: str, service: str | None = None, for_s: float | None = None) -> dict:
    """One fault (experiments.scenario.Injection), what it did as a dict; one that ends later (the
    link back up, the disk freed, the power off itself) is a transient systemd unit, so it outlives
    this SSH session and the link it may take down."""
    if kind == "kill_service":
        unit = f"lab-{service}"
        pid = int(_run(["systemctl", "show", "--property", "MainPID", "--value", unit]).stdout.strip() or 0)
        if not pid:
            raise RuntimeError(f"{unit} is not running on this node")
        _checked(["systemctl", "kill", "--signal", "SIGKILL", "--kill-whom", "main", unit])
        return {"unit": unit, "pid": pid}
    if kind == "link_down":
        iface = lab_interface(address)
        _later("link-down", f"ip link set dev {iface} down; sleep {for_s}; ip link set dev {iface} up")
        return {"iface": iface}
    if kind == "stop_node":
        _later("stop-node", "systemctl poweroff")
        return {}
    if kind == "fill_disk":
        if _run(["systemd-detect-virt", "--container"]).returncode == 0:
            raise RuntimeError(
                "this node is a container: its disk is the host's file system, which fill_disk would fill; "
                "inject fill_disk on a libvirt node"
            )
        filled = fill(FILL)
        _later("fill-disk", f"sleep {for_s}; rm -f {FILL}")
        return {"path": FILL, "filled_bytes": filled}
    raise RuntimeError(f"no fault kind {kind!r}")


def fill(path: str) -> int:
    """Allocate every free block of the file system holding `path` to it, root's reserve included
    (the probes and most services run as root, and would write on into it); the bytes allocated."""
    disk = os.statvfs(Path(path).parent)
    size, filled = disk.f_bfree * disk.f_frsize, 0
    with open(path, "wb") as file:
        while size >= disk.f_frsize:
            try:
                os.posix_fallocate(file.fileno(), filled, size)
                filled += size
            except OSError as e:  # the file's own extent blocks need room too: take less
                if e.errno != errno.ENOSPC:
                    raise
                size //= 2
    return filled


def _checked(argv: list[str]) -> None:
    result = _run(argv)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(argv)}` failed: {_first_line(result.stderr)}")


def _later(name: str, script: str) -> None:
    """`script` in a transient unit of its own, half a second from now (this step answers first)."""
    unit = f"lab-fault-{name}-{time.time_ns()}"
    _checked(["systemd-run", "--quiet", "--collect", "--unit", unit, "/bin/sh", "-c", f"sleep 0.5; {script}"])


def cleanup(run_dir: str) -> dict:
    _run(["rm", "-rf", "--one-file-system", run_dir])
    return {"removed": not Path(run_dir).exists()}


STEPS = {
    f.__name__: f for f in (preflight, start, status, stop, impair, unimpair, inject, cleanup, conditions, set_offload)
}


def main(argv: list[str]) -> int:
    step, args = argv[1], json.loads(argv[2])
    try:
        print(json.dumps({"ok": True, "result": STEPS[step](**args)}))
    except Exception as exc:  # noqa: BLE001 - any failure of a step is reported to the controller as a fault
        print(json.dumps({"ok": False, "error": f"{step}: {type(exc).__name__}: {exc}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
