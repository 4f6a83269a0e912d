"""deploy.yml end to end on three real nspawn containers: every service answers its health
endpoint from another node, a second run changes nothing (nor does --check), failures stop the
deploy with a message naming the node and the cause and leave running services alone, and the
playbook passes ansible-lint's production profile."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import hf_model_dir, lab_cli
from tests.integration.conftest import BIN, PREFIX, playbook, with_group_vars
from workload.catalog import CATALOG

REPO = Path(__file__).resolve().parents[2]
NODES = ("agent-a", "agent-b", "llm")
# The placement inventory/group_vars/all.yml gives the three-node lab (README's table).
RUNS_ON = {
    "agent-a": "agent-a",
    "agent-b": "agent-b",
    "tool-db": "agent-b",
    "tool-synth": "agent-b",
    "baseline-gateway": "agent-a",  # the entry, as Agent A is: its hops cross the lab network
    "baseline-order": "agent-b",
    "baseline-shipping": "agent-b",
}
RECAP = re.compile(r"^(\S+)\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


def recap(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, int]]:
    return {
        host: {"ok": int(ok), "changed": int(changed), "unreachable": int(unreachable), "failed": int(failed)}
        for host, ok, changed, unreachable, failed in RECAP.findall(result.stdout)
    }


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout[-6000:]}\n{result.stderr[-2000:]}"


def http_codes(config: Path, node: str, urls: list[str], token: str | None = None) -> list[str]:
    """The HTTP status of each URL as seen from `node` (one SSH round trip), sent with `token` if given."""
    auth = f"-H 'Authorization: Bearer {token}' " if token else ""
    loop = "; ".join(f"curl -s -o /dev/null -m 10 -w '%{{http_code}}\\n' {auth}{url}" for url in urls)
    return lab_cli(config, "ssh", node, "--", loop).stdout.split()


@pytest.fixture
def lab(deployed_lab):
    """The session's deployed lab (tests/integration/conftest.py) and its first deploy."""
    return deployed_lab.config, deployed_lab.first_deploy


def api_token(config: Path) -> str:
    return (config.parent / ".lab" / "secrets" / "api_token").read_text()


def address(node: str) -> str:
    return f"{PREFIX}.{11 + NODES.index(node)}"


def health_urls() -> dict[str, str]:
    return {name: f"http://{address(RUNS_ON[name])}:{CATALOG.services[name].port}/healthz" for name in RUNS_ON}


@pytest.mark.integration
def test_first_deploy_configures_every_node(lab):
    _, first = lab
    assert first.returncode == 0, explain(first)
    assert set(recap(first)) == set(NODES)
    assert all(counts["failed"] == 0 and counts["unreachable"] == 0 for counts in recap(first).values())


@pytest.mark.integration
def test_every_service_answers_its_health_endpoint_from_another_node(lab):
    config, _ = lab
    urls = health_urls()
    on_agent_b = [urls[s] for s, node in RUNS_ON.items() if node == "agent-b"]
    assert http_codes(config, "agent-a", on_agent_b) == ["200"] * len(on_agent_b)
    assert http_codes(config, "llm", [urls["agent-a"]]) == ["200"]
    assert http_codes(config, "agent-b", [f"http://{address('llm')}:8000/v1/models"], api_token(config)) == ["200"]


@pytest.mark.integration
def test_units_run_as_the_lab_user_and_probe_facts_are_recorded(lab):
    config, _ = lab
    units = {node: [f"lab-{service}" for service, where in RUNS_ON.items() if where == node] for node in NODES}
    units["llm"] = ["lab-llm"]
    for node, names in units.items():
        active = lab_cli(config, "ssh", node, "--", "systemctl is-active " + " ".join(names)).stdout.split()
        assert active == ["active"] * len(names), (node, names, active)
    for node in NODES:
        facts = lab_cli(config, "ssh", node, "--", "cat /etc/ansible/facts.d/lab_probes.fact").stdout
        assert yaml.safe_load(facts)["probes"]["lifetime"]["source"].startswith("bpftrace")
    owner = lab_cli(config, "ssh", "agent-b", "--", "ps -o user= -C python").stdout.split()
    assert owner and set(owner) == {"lab"}


@pytest.mark.integration
def test_second_deploy_and_check_mode_change_nothing(lab):
    config, _ = lab
    second = playbook(config)
    assert second.returncode == 0, explain(second)
    assert {host: counts["changed"] for host, counts in recap(second).items()} == dict.fromkeys(NODES, 0), explain(
        second
    )
    check = playbook(config, "--check", "--diff")
    assert check.returncode == 0, explain(check)
    assert {host: counts["changed"] for host, counts in recap(check).items()} == dict.fromkeys(NODES, 0), explain(check)


@pytest.mark.integration
def test_the_database_wants_the_labs_password_which_only_root_reads(lab):
    config, _ = lab
    secret = config.parent / ".lab" / "secrets" / "db_password"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_text()) == 32
    query = f"psql --no-psqlrc -tA -c 'select 1' postgresql://lab@{address('agent-b')}:5432/lab"
    without = lab_cli(config, "ssh", "agent-a", "--", f"PGPASSWORD=wrong {query}", check=False)
    assert without.returncode != 0 and "password authentication failed" in without.stderr + without.stdout
    right = lab_cli(config, "ssh", "agent-a", "--", f"PGPASSWORD={secret.read_text()} {query}")
    assert right.stdout.strip() == "1"
    configs = lab_cli(config, "ssh", "agent-b", "--", "sudo stat -c '%a %U %G' /etc/lab/tool-db.yaml").stdout.split()
    assert configs == ["640", "root", "lab"]  # the services' DSN holds the password


GUARDED = {  # one request each endpoint kind takes, from another node
    "llm": ("llm", 8000, "/v1/chat/completions"),
    "tool-db": ("agent-b", 8201, "/mcp"),
    "agent-a": ("agent-a", 8101, "/task"),
    "baseline-gateway": ("agent-a", 8301, "/task"),
}
CHAT = '{"model": "lab-model", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}'


def posted_codes(config: Path, node: str, token: str | None) -> dict[str, str]:
    """The HTTP status of a POST to each GUARDED endpoint from `node`, with `token` or none."""
    auth = f"-H 'Authorization: Bearer {token}' " if token else ""
    loop = "; ".join(
        f"curl -s -o /dev/null -m 60 -w '%{{http_code}}\\n' -X POST -H 'content-type: application/json' "
        f"-H 'accept: application/json, text/event-stream' {auth}-d '{CHAT}' http://{address(where)}:{port}{path}"
        for where, port, path in GUARDED.values()
    )
    return dict(zip(GUARDED, lab_cli(config, "ssh", node, "--", loop).stdout.split(), strict=True))


@pytest.mark.integration
def test_every_endpoint_wants_the_labs_token_which_only_root_reads(lab):
    config, _ = lab
    secret = config.parent / ".lab" / "secrets" / "api_token"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(secret.read_text()) == 32
    assert posted_codes(config, "agent-b", None) == dict.fromkeys(GUARDED, "401")
    assert posted_codes(config, "agent-b", "x" * 32) == dict.fromkeys(GUARDED, "401")
    with_token = posted_codes(config, "agent-b", secret.read_text())
    assert with_token["llm"] == "200" and "401" not in with_token.values(), with_token  # the bodies' own faults: 4xx
    env = lab_cli(config, "ssh", "llm", "--", "sudo stat -c '%a %U %G' /etc/lab/llm.env").stdout.split()
    assert env == ["600", "root", "root"]


@pytest.mark.integration
def test_a_missing_model_stops_the_deploy_naming_the_node(lab):
    config, _ = lab
    result = playbook(config, "--tags", "llm_server", "-e", "lab_llm_cpu_model=/nonexistent/model.gguf")
    assert result.returncode != 0
    assert "llm: llm.cpu_model /nonexistent/model.gguf: no such file" in result.stdout, explain(result)
    models = f"http://{address('llm')}:8000/v1/models"
    assert http_codes(config, "agent-a", [models], api_token(config)) == ["200"]  # left running


@pytest.mark.integration
def test_an_unhealthy_service_stops_the_deploy_with_its_cause(lab):
    config, _ = lab
    urls = health_urls()
    try:
        broken = playbook(
            config,
            "--tags",
            "mcp_tools",
            "-e",
            "lab_health_timeout_s=6",
            "-e",
            f"lab_db_dsn=postgresql://lab@{address('agent-b')}:5999/lab",
        )
        assert broken.returncode != 0
        message = " ".join(broken.stdout.split())
        assert (
            f"agent-b: lab-tool-db did not become healthy within 6 s at http://{address('agent-b')}:8201/healthz"
            in message
        )
        assert "port 5999 failed" in message, explain(broken)
        others = [urls["baseline-order"], urls["agent-b"]]
        assert http_codes(config, "agent-a", others) == ["200", "200"]  # the others run on
    finally:  # the session's lab is shared: the later modules need tool-db back whatever failed above
        repaired = playbook(config, "--tags", "mcp_tools")
    assert repaired.returncode == 0, explain(repaired)
    assert http_codes(config, "agent-a", [urls["tool-db"]]) == ["200"]


@pytest.mark.integration
def test_an_unreachable_node_stops_the_deploy_naming_it(lab, tmp_path):
    config, _ = lab
    inventory = yaml.safe_load((config.parent / "inventory" / "hosts.yml").read_text())
    inventory["all"]["hosts"]["ghost"] = {"ansible_host": f"{PREFIX}.99", "lab_groups": ["agents"]}
    inventory["all"]["children"]["agents"]["hosts"]["ghost"] = None
    (tmp_path / "inventory").mkdir()
    (tmp_path / "inventory" / "hosts.yml").write_text(yaml.safe_dump(inventory))
    result = playbook(config, "--tags", "common", inventory=with_group_vars(tmp_path / "inventory"))
    assert result.returncode != 0
    assert re.search(rf"fatal: \[ghost\]: UNREACHABLE!.*\n(.*\n)*?.*{re.escape(PREFIX)}\.99", result.stdout), explain(
        result
    )
    assert recap(result)["agent-a"]["ok"] <= 1  # the others stopped with it


def test_ansible_lint_passes_the_production_profile():
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [str(BIN / "ansible-lint"), "--offline"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


def copy_on_node(config: Path, directory: str) -> dict[str, str]:
    """The sha256 of each file under `directory` on the LLM node, by path inside it."""
    listing = lab_cli(config, "ssh", "llm", "--", f"cd {directory} && sudo find . -type f -exec sha256sum {{}} +")
    return {
        path.removeprefix("./"): digest
        for digest, path in (line.split(maxsplit=1) for line in listing.stdout.splitlines())
    }


@pytest.mark.integration
def test_vllms_model_directory_is_copied_once_checked_and_repaired(lab, tmp_path):
    """The llm_model role on the container lab's LLM node, as on a node that runs vLLM: the
    controller's directory is copied whole (hidden download metadata left out), a second deploy
    changes nothing, a damaged copy gets back exactly the files it lacks, and a node without room
    for the model stops the deploy before anything is copied."""
    config, _ = lab
    model = hf_model_dir(tmp_path / "tiny-model", weights_bytes=3 * 2**20)
    (model / "shards").mkdir()
    (model / "shards" / "model-00002.safetensors").write_bytes(os.urandom(1000))
    (model / ".cache").mkdir()
    (model / ".cache" / "download.lock").write_text("")
    expected = {
        str(p.relative_to(model)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in model.rglob("*")
        if p.is_file() and ".cache" not in p.parts
    }
    where = "/var/lib/lab/models/tiny-model"
    as_vllm = ("--tags", "llm_model", "-e", "lab_llm_backend=vllm", "-e", f"lab_llm_model={model}")
    try:
        first = playbook(config, *as_vllm)
        assert first.returncode == 0 and recap(first)["llm"]["changed"] > 0, explain(first)
        copy = copy_on_node(config, where)
        assert json.loads(lab_cli(config, "ssh", "llm", "--", f"cat {where}/.lab-model.json").stdout)["files"]
        assert {p: d for p, d in copy.items() if p != ".lab-model.json"} == expected
        again = playbook(config, *as_vllm)
        assert again.returncode == 0 and recap(again)["llm"]["changed"] == 0, explain(again)

        damage = f"sudo rm {where}/tokenizer.json && sudo truncate -s 100 {where}/model.safetensors"
        lab_cli(config, "ssh", "llm", "--", f"{damage} && sudo touch {where}/model-old.safetensors")
        repaired = playbook(config, *as_vllm)
        assert repaired.returncode == 0, explain(repaired)
        changed = set(re.findall(r"^changed: \[llm\] => \(item=(\S+)\)", repaired.stdout, re.MULTILINE))
        assert changed == {"tokenizer.json", "model.safetensors", "model-old.safetensors"}, explain(repaired)
        assert {p: d for p, d in copy_on_node(config, where).items() if p != ".lab-model.json"} == expected

        other = hf_model_dir(tmp_path / "other-model")
        no_room = playbook(config, *as_vllm[:-1], f"lab_llm_model={other}", "-e", "llm_model_reserve_mb=1000000000")
        message = " ".join(no_room.stdout.split())
        assert no_room.returncode != 0 and f"llm: llm.model {other} needs 0.0 GiB more" in message, explain(no_room)
        assert "free space on the host, whose disk the containers share" in message
        left = lab_cli(config, "ssh", "llm", "--", "ls /var/lib/lab/models").stdout.split()
        assert "other-model" not in left
    finally:
        lab_cli(config, "ssh", "llm", "--", f"sudo rm -rf {where}", check=False)
