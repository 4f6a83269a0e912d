"""The command line: one-line errors without tracebacks, and honest placeholders."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from lab.state import NAMES_DIR
from tests.conftest import REPO, hf_model_dir, lab_cli, write_lab


def test_bad_config_is_one_line_without_traceback(tmp_path):
    config = write_lab(tmp_path, "cli", "10.90.0")
    config.write_text(config.read_text().replace("address: 10.90.0.12", "address: 10.90.0.300"))
    result = lab_cli(config, "status", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "nodes[1].address" in lines[0]


def test_config_that_is_not_utf8_is_one_line_naming_the_file(tmp_path):
    config = write_lab(tmp_path, "cli", "10.90.0")
    config.write_bytes(b"# caf\xe9 (Latin-1)\n" + config.read_bytes())
    result = lab_cli(config, "status", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: {config}: line 1: not UTF-8 text (byte 0xe9); save the file as UTF-8"


def test_missing_config_names_the_file(tmp_path):
    result = lab_cli(tmp_path / "absent.yaml", "up", check=False)
    assert result.returncode == 1
    assert "absent.yaml: no such file" in result.stderr


def test_status_of_a_lab_that_is_not_up(tmp_path):
    config = write_lab(tmp_path, "cli", "10.90.0", provider="nspawn")
    result = lab_cli(config, "status")
    assert "not up" in result.stdout
    assert result.stdout.count("absent") == 3


def test_ssh_to_a_lab_that_is_not_up(tmp_path):
    config = write_lab(tmp_path, "cli", "10.90.0")
    result = lab_cli(config, "ssh", "agent-a", check=False)
    assert result.returncode == 1 and "run `lab up` first" in result.stderr


def test_unknown_provider_option(tmp_path):
    config = write_lab(tmp_path, "cli", "10.90.0")
    result = lab_cli(config, "up", "--provider", "docker", check=False)
    assert result.returncode == 1 and "unknown provider" in result.stderr


def test_nat_on_containers_is_refused_before_anything_is_made(tmp_path):
    config = write_lab(tmp_path, "gn", "10.91.0", provider="nspawn", network={"subnet": "10.91.0.0/24", "nat": True})
    result = lab_cli(config, "up", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "lab.yaml: network.nat: the nspawn provider has no NAT route" in result.stderr
    assert not (tmp_path / ".lab").exists() and not (NAMES_DIR / "gn").exists()


@pytest.mark.parametrize(
    ("provider", "said"),
    [
        ("nspawn", "containers share the host's kernel and cannot take a passed-through GPU"),
        (
            "libvirt",
            "qemu:///system would emulate llm with TCG (lab.yaml says accelerator: tcg), "
            "and a passed-through GPU needs KVM",
        ),
    ],
)
def test_a_gpu_node_that_cannot_drive_its_gpu_is_refused_before_anything_is_made(tmp_path, provider, said):
    """On containers, and on VMs emulated with TCG (here forced; libvirtd is started if it is not running)."""
    config = write_lab(tmp_path, "gp", "10.91.0", provider=provider, accelerator="tcg")
    data = yaml.safe_load(config.read_text())
    data["nodes"][2]["gpu"] = {"pci": "0000:41:00.0"}
    data["llm"]["model"] = str(hf_model_dir(tmp_path / "model"))
    config.write_text(yaml.safe_dump(data))
    result = lab_cli(config, "up", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"nodes[2].gpu (0000:41:00.0): {said}" in result.stderr
    assert not (tmp_path / ".lab").exists() and not (NAMES_DIR / "gp").exists()
    if provider == "libvirt":
        networks = subprocess.run(
            ["virsh", "-c", "qemu:///system", "net-list", "--all", "--name"], capture_output=True, text=True
        )
        assert networks.returncode == 0 and "gp-net" not in networks.stdout.split()


def test_teardown_of_nothing_is_a_no_op(tmp_path):
    config = write_lab(tmp_path, "cli", "10.90.0", provider="nspawn")
    assert "nothing to remove" in lab_cli(config, "teardown").stdout


def test_python_dash_m_and_console_script_are_one_program():
    import subprocess
    import sys
    from pathlib import Path

    via_module = lab_cli(REPO / "lab.yaml", "--help").stdout
    script = Path(sys.executable).parent / "lab"
    via_script = subprocess.run(
        [str(script), "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "teardown" in via_module and via_module == via_script


def test_a_teardown_that_cannot_reach_the_hypervisor_says_so_and_keeps_the_state(tmp_path):
    # nothing listens on port 1 of loopback: libvirt refuses at once
    config = write_lab(tmp_path, "tq", "10.82.0", provider="libvirt")
    text = config.read_text().replace(
        "address: 10.82.0.11", "address: 10.82.0.11\n  libvirt_uri: qemu+tcp://127.0.0.1:1/system"
    )
    config.write_text(text)
    known = tmp_path / ".lab" / "known_hosts"
    known.parent.mkdir()
    known.write_text("10.82.0.11 ssh-ed25519 AAAA\n")
    result = lab_cli(config, "teardown", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "teardown incomplete (libvirt: cannot connect to libvirt at qemu+tcp://127.0.0.1:1/system" in result.stderr
    assert "`lab teardown` can try again" in result.stderr
    assert known.read_text() == "10.82.0.11 ssh-ed25519 AAAA\n"
