"""The whole workload on one machine, on loopback: a throwaway PostgreSQL cluster, the
CPU LLM server and every service as a subprocess. Used by the tests and the benchmark;
on the lab the deploy roles run the same entry points as system services."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from workload.catalog import CATALOG
from workload.config import SERVICES, bearer
from workload.driver import Entry
from workload.llm import DEFAULT_THREADS, TOKEN_ENV

PG_BIN = Path(os.environ.get("LAB_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None, want_ok: bool = True) -> None:
    """Wait until `url` answers (with 200 when `want_ok`); fail early if `proc` died."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200 or not want_ok:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready after {timeout_s:g} s ({last})")


def _run_as(user: str | None, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    full = ["runuser", "-u", user, "--", *argv] if user else argv
    return subprocess.run(full, check=True, capture_output=True, text=True, timeout=120, **kwargs)


@dataclass
class LocalPostgres:
    """A PostgreSQL 15 cluster in `directory`, on 127.0.0.1:`port`, trust auth, db `lab`."""

    directory: Path
    port: int = field(default_factory=free_port)

    @property
    def dsn(self) -> str:
        return f"postgresql://lab@127.0.0.1:{self.port}/lab"

    def _user(self) -> str | None:
        """initdb refuses root: run the cluster as `postgres` (or `nobody`) when root."""
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "nobody"):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        raise RuntimeError("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")

    def start(self) -> str:
        if not (PG_BIN / "initdb").exists():
            raise RuntimeError(f"no PostgreSQL binaries in {PG_BIN}: apt-get install postgresql-15 (or set LAB_PG_BIN)")
        user = self._user()
        self.directory.mkdir(parents=True, exist_ok=True)
        if user:
            shutil.chown(self.directory, user)
        data = self.directory / "data"
        _run_as(user, [str(PG_BIN / "initdb"), "-D", str(data), "-U", "lab", "--auth=trust", "-E", "UTF8"])
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        _run_as(
            user,
            [str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(self.directory / "log"), "-w", "start"],
        )
        _run_as(user, [str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "lab", "lab"])
        return self.dsn

    def stop(self) -> None:
        _run_as(self._user(), [str(PG_BIN / "pg_ctl"), "-D", str(self.directory / "data"), "-m", "fast", "stop"])


@dataclass
class LocalStack:
    """The services (and optionally the LLM server) as subprocesses on loopback ports, each wanting
    the stack's bearer token as the lab's do."""

    directory: Path
    db_dsn: str
    llm_url: str | None = None
    synth: dict[str, Any] = field(default_factory=dict)
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in (*SERVICES, "llm"):
            self.ports.setdefault(name, free_port())

    @property
    def telemetry_dir(self) -> Path:
        return self.directory / "telemetry"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    @property
    def entry(self) -> Entry:
        return Entry({w.entry: self.url(w.entry) for w in CATALOG.workloads.values()}, token=self.token)

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header every request to the stack but /healthz and the Agent Card needs."""
        return bearer(self.token)

    def config(self, service: str, **overrides: Any) -> dict[str, Any]:
        peers = {name: self.url(name) + spec.path for name, spec in CATALOG.services.items()}
        config = {
            "node": "loopback",
            "host": "127.0.0.1",
            "port": self.ports[service],
            "telemetry_dir": str(self.telemetry_dir),
            "peers": peers,
            "db_dsn": self.db_dsn,
            "llm_url": self.llm_url or f"{self.url('llm')}/v1",
            "synth": self.synth,
            "api_token": self.token,
        }
        config.update(overrides)
        return config

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        # the subprocess imports this same copy of `workload`, installed or not
        root = str(Path(__file__).resolve().parents[1])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            TOKEN_ENV: self.token,
        }
        with open(self.directory / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        self.procs[name] = proc
        return proc

    def start_service(self, service: str, name: str | None = None, **overrides: Any) -> subprocess.Popen:
        """Start `service` (under `name`, default the service) with its config plus overrides."""
        name = name or service
        path = self.directory / f"{name}.json"
        path.write_text(json.dumps(self.config(service, **overrides)))
        return self.spawn(name, [sys.executable, "-m", "workload", "serve", service, "--config", str(path)])

    def start_llm(
        self, model: str, backend: str = "auto", threads: int = DEFAULT_THREADS, timeout_s: float = 300
    ) -> None:
        """The LLM server (`python -m workload.llm serve`): `backend` auto, cpu or vllm; `threads` for llama.cpp."""
        proc = self.spawn(
            "llm",
            [
                sys.executable,
                "-m",
                "workload.llm",
                "serve",
                "--model",
                model,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.ports["llm"]),
                "--backend",
                backend,
                "--threads",
                str(threads),
            ],
        )
        wait_http(f"{self.url('llm')}/health", timeout_s, proc)

    def start(self, timeout_s: float = 120, services: Iterable[str] = SERVICES) -> None:
        """Start `services` (every one by default) in that order, each healthy before the next."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for service in services:
            proc = self.start_service(service)
            wait_http(f"{self.url(service)}/healthz", timeout_s, proc)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def read_events(directory: Path) -> list[dict[str, Any]]:
    """Every event of every JSONL file in `directory`."""
    events = []
    for path in sorted(directory.glob("*.jsonl")):
        events.extend(json.loads(line) for line in path.read_text().splitlines() if line.strip())
    return events


def read_served_events(directory: Path, call_ids: Iterable[str], timeout_s: float = 15) -> list[dict[str, Any]]:
    """Every event in `directory`, once the server side of each of `call_ids` is among them (or after
    `timeout_s`): a server writes its event after the response went out, so the caller may see the
    answer first."""
    wanted = set(call_ids)
    deadline = time.monotonic() + timeout_s
    while True:
        events = read_events(directory)
        served = {e["call_id"] for e in events if e["side"] == "server"}
        if wanted <= served or time.monotonic() > deadline:
            return events
        time.sleep(0.2)
