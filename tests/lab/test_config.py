"""The lab model: valid files load, every kind of bad input gets one error naming the field."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from lab.config import LabConfig, load_config, parse_config
from lab.errors import ConfigError
from tests.conftest import REPO, hf_model_dir

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


def test_gpu_accepts_one_or_many_devices(tmp_path):
    data = copy.deepcopy(BASE)
    data["llm"]["model"] = str(hf_model_dir(tmp_path / "model"))
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


def test_network_name_of_older_files_is_refused_with_what_to_do():
    message = problem(lambda d: d["network"].update(name="labnet"))
    assert message == (
        "lab.yaml: network.name: not used: the lab's bridge and libvirt network are named after "
        "the lab's `name` (<name>-br, <name>-net); remove network.name"
    )


def readme_table_rows() -> list[str]:
    """The rows of the README's lab.yaml table."""
    section = (REPO / "README.md").read_text().split("\n## lab.yaml\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def test_the_readme_table_names_every_lab_yaml_key_and_no_other():
    rows = readme_table_rows()
    documented = {key for row in rows for key in re.findall(r"`([^`]+)`", row.split("|")[1])}
    expected, in_rows = set(), {}
    for name, field in LabConfig.model_fields.items():
        annotation = field.annotation
        if field.exclude:
            continue
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            expected |= {f"{name}.{sub}" for sub in annotation.model_fields}
        elif getattr(annotation, "__origin__", None) is list:
            expected.add(f"{name}[]")
            in_rows[f"{name}[]"] = list(annotation.__args__[0].model_fields)
        else:
            expected.add(name)
    assert documented == expected
    for key, fields in in_rows.items():
        row = next(r for r in rows if r.startswith(f"| `{key}`"))
        assert [f for f in fields if f"`{f}" not in row] == [], f"{key} row"


def test_a_vllm_lab_needs_a_model_directory_on_this_host(tmp_path):
    """The lab network has no route out, so vLLM's weights come from the controller; a hub id,
    a missing directory or one without what vLLM reads is refused naming llm.model."""

    def gpu(model: object) -> str:
        def mutate(data: dict) -> None:
            data["nodes"][2]["gpu"] = {"pci": "0000:41:00.0"}
            data["llm"]["model"] = model
            if model is None:
                data["llm"].pop("model")

        return problem(mutate)

    assert gpu(None).startswith("lab.yaml: llm.model: the LLM node runs vLLM, which needs a model directory")
    hub = gpu("meta-llama/Llama-3.1-8B-Instruct")
    assert (
        "llm.model: meta-llama/Llama-3.1-8B-Instruct looks like a hub id, but the lab network has no route out" in hub
    )
    assert "huggingface-cli download" in hub and "network.nat: true routes the nodes out" in hub
    data = copy.deepcopy(BASE)
    data["nodes"][2]["gpu"] = {"pci": "0000:41:00.0"}
    data["llm"]["model"] = "Qwen/Qwen2.5-1.5B-Instruct"
    data["network"] = {**data.get("network", {}), "nat": True}  # vLLM fetches it over the host's NAT
    routed = parse_config(data, tmp_path / "lab.yaml")
    assert routed.llm_hub_id == "Qwen/Qwen2.5-1.5B-Instruct"
    gguf = tmp_path / "gguf"
    gguf.mkdir()
    (gguf / "model.gguf").write_bytes(b"GGUF")
    message = gpu(str(gguf))
    assert f"{gguf} lacks config.json, tokenizer_config.json, *.safetensors" in message
    model = hf_model_dir(tmp_path / "qwen")
    data = copy.deepcopy(BASE)
    data["nodes"][2]["gpu"] = {"pci": "0000:41:00.0"}
    data["llm"]["model"] = "qwen"  # relative to lab.yaml's directory
    lab = parse_config(data, tmp_path / "lab.yaml")
    assert lab.uses_vllm and lab.llm_model_dir == model and lab.llm_hub_id is None


def test_a_cpu_lab_ignores_llm_model_and_backend_vllm_asks_for_it():
    assert not load_config(REPO / "lab.yaml").uses_vllm
    assert "llm.model: the LLM node runs vLLM" in problem(lambda d: d["llm"].update(backend="vllm"))
