"""Fast checks of the workload's pure parts: task set, config, telemetry headers, model glue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workload.config import ConfigError, load_config
from workload.llm import QWEN_05B, SHIPPED, ModelError, ShippedModel, materialise
from workload.llm.__main__ import vllm_argv
from workload.tasks import answer_is_correct, make_dataset, make_tasks
from workload.telemetry import CallEvent, context_from_headers, outgoing_headers


def test_task_set_is_deterministic_and_answers_come_from_the_dataset() -> None:
    assert make_tasks(3, 12) == make_tasks(3, 12)
    assert make_tasks(3, 12) != make_tasks(4, 12)
    data = make_dataset(3)
    orders = {o.order_id: o for o in data.orders}
    shipments = {s.order_id: s for s in data.shipments}
    for task in make_tasks(3, 30):
        assert task.order_id in task.text
        if task.kind == "order_status":
            assert task.expected == {"status": orders[task.order_id].status}
        elif task.kind == "order_total":
            assert task.expected == {"total": orders[task.order_id].total}
        else:
            shipment = shipments[task.order_id]
            assert task.expected == {"carrier": shipment.carrier, "eta": shipment.eta}


def test_answer_check_needs_every_fact() -> None:
    task = next(t for t in make_tasks(1, 3) if t.kind == "shipment_eta")
    carrier, eta = task.expected["carrier"], task.expected["eta"]
    assert answer_is_correct(task, f"It ships with {carrier.lower()}, arriving {eta}.")
    assert not answer_is_correct(task, f"It ships with {carrier}.")
    assert not answer_is_correct(task, None)


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("node: agent-a\nllm_url: http://llm:8000/v1\npeers: {tool-db: http://b:8201/mcp}\n")
    with pytest.raises(ConfigError, match=r"agent-a needs peers\.agent-b"):
        load_config(path, "agent-a")
    path.write_text("node: b\nport: 99999\ndb_dsn: postgresql://x\n")
    with pytest.raises(ConfigError, match=r"field port"):
        load_config(path, "tool-db")
    with pytest.raises(ConfigError, match="unknown service"):
        load_config(path, "agent-c")
    json_path = tmp_path / "s.json"
    json_path.write_text(json.dumps({"node": "agent-b", "synth": {"fanout": 3}}))
    assert load_config(json_path, "tool-synth").synth.fanout == 3


def test_ids_round_trip_through_headers() -> None:
    event = CallEvent(
        node="n",
        service="agent-a",
        agent_id="agent-a",
        task_id="t1",
        call_id="ab" * 8,
        parent_id="cd" * 8,
        trace_id="ef" * 16,
        kind="tool",
        side="client",
        peer="tool-db",
        op="get_order",
        start_ns=1,
    )
    headers = outgoing_headers(event)
    assert headers["traceparent"] == f"00-{'ef' * 16}-{'ab' * 8}-01"
    ctx = context_from_headers(headers)
    assert (ctx.task_id, ctx.trace_id, ctx.call_id) == ("t1", "ef" * 16, "ab" * 8)


def test_shipped_model_is_joined_and_a_wrong_checksum_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = materialise(QWEN_05B.name)  # the shared cache, as the LLM server uses it
    assert path.stat().st_size == QWEN_05B.size
    assert path.read_bytes()[:4] == b"GGUF"
    bad = ShippedModel("bad", "part 1 only", QWEN_05B.parts[:1], QWEN_05B.part_files[:1], "0" * 64, 1)
    monkeypatch.setitem(SHIPPED, "bad", bad)
    with pytest.raises(ModelError, match="refusing"):
        materialise("bad", tmp_path)
    assert not any(p.name.startswith("bad") for p in tmp_path.iterdir())
    with pytest.raises(ModelError, match="neither a GGUF file nor a shipped model"):
        materialise("no-such-model", tmp_path)


def test_gpu_backend_is_vllm_with_tool_calling() -> None:
    argv = vllm_argv("meta-llama/Llama-3.1-8B-Instruct", "0.0.0.0", 8000, "lab-model")
    assert argv[:3] == ["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct"]
    assert "--enable-auto-tool-choice" in argv and argv[argv.index("--tool-call-parser") + 1] == "llama3_json"
    qwen = vllm_argv("/models/qwen", "0.0.0.0", 8000, "lab-model", 8192, 0.9, [], "hermes")
    assert qwen[qwen.index("--tool-call-parser") + 1] == "hermes"
    assert (
        qwen[qwen.index("--max-model-len") + 1] == "8192" and qwen[qwen.index("--gpu-memory-utilization") + 1] == "0.9"
    )
