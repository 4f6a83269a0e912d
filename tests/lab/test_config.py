"""The lab model: valid files load, every kind of bad input gets one error naming the field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lab.config import load_config, parse_config
from lab.errors import ConfigError
from tests.conftest import REPO

BASE = yaml.safe_load((REPO / "lab.yaml").read_text())


def problem(mutate) -> str:
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data, Path("lab.yaml"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("lab.yaml: ")
    return message


def test_the_shipped_lab_yaml_loads():
    lab = load_config(REPO / "lab.yaml")
    assert [n.name for n in lab.nodes] == ["agent-a", "agent-b", "llm"]
    assert lab.llm_node.name == "llm"
    assert str(lab.network.host_address) == "10.77.0.1"
    assert lab.state_dir == REPO / ".lab"


def test_unknown_key_is_named_with_the_allowed_ones():
    message = problem(lambda d: d.update(providr="nspawn"))
    assert "unknown key 'providr'" in message and "allowed: name, provider" in message


def test_unknown_key_inside_a_node():
    message = problem(lambda d: d["nodes"][1].update(adress="10.77.0.20"))
    assert message.startswith("lab.yaml: nodes[1]: unknown key 'adress'")


def test_bad_address():
    message = problem(lambda d: d["nodes"][0].update(address="10.77.0.300"))
    assert "nodes[0].address" in message and "10.77.0.300" in message


def test_address_outside_the_subnet():
    assert "outside the lab subnet" in problem(lambda d: d["nodes"][2].update(address="192.168.1.5"))


def test_address_of_the_host_is_reserved():
    assert "reserved" in problem(lambda d: d["nodes"][2].update(address="10.77.0.1"))


def test_duplicate_address():
    message = problem(lambda d: d["nodes"][2].update(address="10.77.0.11"))
    assert "nodes[2].address" in message and "agent-a" in message


def test_duplicate_name():
    message = problem(lambda d: d["nodes"][1].update(name="agent-a"))
    assert "nodes[1].name: duplicate node name 'agent-a'" in message


def test_missing_image_file():
    message = problem(lambda d: d.update(image={"file": "missing.qcow2"}))
    assert "image.file" in message and "missing.qcow2 does not exist" in message


def test_gpu_address_format_and_placement():
    assert "not a PCI address" in problem(lambda d: d["nodes"][2].update(gpu={"pci": "41:00.0"}))
    assert "only a node in the 'llm' group" in problem(lambda d: d["nodes"][0].update(gpu={"pci": "0000:41:00.0"}))


def test_gpu_accepts_one_or_many_devices():
    data = copy.deepcopy(BASE)
    data["nodes"][2]["gpu"] = {"pci": "0000:41:00.0"}
    assert parse_config(data, Path("lab.yaml")).nodes[2].gpu.pci == ["0000:41:00.0"]
    data["nodes"][2]["gpu"] = {"pci": ["0000:41:00.0", "0000:41:00.1"]}
    assert len(parse_config(data, Path("lab.yaml")).nodes[2].gpu.pci) == 2


def test_every_group_needs_a_node():
    assert "no node is in group 'llm'" in problem(lambda d: d["nodes"].pop(2))


def test_missing_required_field():
    assert "nodes[0].address: required but missing" in problem(lambda d: d["nodes"][0].pop("address"))


def test_bad_enum_value():
    assert "provider" in problem(lambda d: d.update(provider="docker"))


def test_names_too_long_for_interfaces():
    assert "too long for interface names" in problem(lambda d: d.update(name="averylongname"))


def test_not_yaml_and_not_a_mapping(tmp_path):
    broken = tmp_path / "lab.yaml"
    broken.write_text("nodes: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    broken.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(broken)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
