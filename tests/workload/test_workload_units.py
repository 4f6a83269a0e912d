"""Fast checks of the workload's pure parts: task set, config, telemetry headers, model glue."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from tests.conftest import require_root
from workload.baseline import BaselineTask
from workload.config import REQUIRED_PEERS, TOOL_ENDPOINTS, ConfigError, ServiceConfig, load_config
from workload.llm import DEFAULT_MODEL, QWEN_05B, QWEN_15B, SHIPPED, ModelError, ShippedModel, materialise
from workload.llm.__main__ import vllm_argv
from workload.tasks import KINDS, Dataset, Task, answer_is_correct, hub_of, make_dataset, make_tasks
from workload.telemetry import CallEvent, EventWriter, context_from_headers, outgoing_headers


def test_task_set_is_deterministic_and_answers_come_from_the_dataset() -> None:
    assert make_tasks(3, 12) == make_tasks(3, 12)
    assert make_tasks(3, 12) != make_tasks(4, 12)
    data = make_dataset(3)
    tasks = make_tasks(3, 30)
    assert {t.kind for t in tasks} == set(KINDS)
    for task in tasks:
        assert task.order_id in task.text
        assert (task.other_order_id is not None) == (task.kind == "compare_totals")
        assert task.expected == _facts_in(data, task), task.kind


def _facts_in(data: Dataset, task: Task) -> dict[str, str]:
    """What a correct answer to `task` states, read from the dataset directly."""
    orders = {o.order_id: o for o in data.orders}
    order = orders[task.order_id]
    if task.kind == "order_status":
        return {"status": order.status}
    if task.kind == "order_total":
        return {"total": order.total}
    if task.kind == "customer_city":
        return {"city": next(c.city for c in data.customers if c.customer_id == order.customer_id)}
    if task.kind == "compare_totals":
        other = orders[str(task.other_order_id)]
        assert other.order_id in task.text and float(other.total) != float(order.total)
        dearer = order if float(order.total) > float(other.total) else other
        return {"order": dearer.order_id, "total": dearer.total}
    shipment = next(s for s in data.shipments if s.order_id == order.order_id)
    parcel_hub = hub_of(f"parcel:{shipment.tracking_no}")
    if task.kind == "shipment_eta":
        return {"carrier": shipment.carrier, "eta": shipment.eta}
    if task.kind == "parcel_hub":
        return {"parcel_hub": parcel_hub}
    assert task.kind == "delivery_risk"
    return {"parcel_hub": parcel_hub, "carrier_hub": hub_of(f"carrier:{shipment.carrier}")}


def test_answer_check_needs_every_fact() -> None:
    task = next(t for t in make_tasks(1, len(KINDS)) if t.kind == "shipment_eta")
    carrier, eta = task.expected["carrier"], task.expected["eta"]
    assert answer_is_correct(task, f"It ships with {carrier.lower()}, arriving {eta}.")
    assert not answer_is_correct(task, f"It ships with {carrier}.")
    assert not answer_is_correct(task, None)


def test_the_baseline_has_a_rest_call_for_every_planned_tool_and_reaches_its_peers() -> None:
    planned = {tool for kind in KINDS.values() for step in kind.plan for tool in step}
    assert planned == set(TOOL_ENDPOINTS)
    assert set(REQUIRED_PEERS["baseline-gateway"]) == {"baseline-order", "baseline-shipping", "tool-synth"}
    config = ServiceConfig(node="n", peers={"tool-synth": "http://b:8202/mcp", "baseline-order": "http://b:8302"})
    assert (config.rest_url("tool-synth"), config.rest_url("baseline-order")) == ("http://b:8202", "http://b:8302")
    task = {"task_id": "t", "kind": "compare_totals", "text": "?", "order_id": "ORD-00001"}
    with pytest.raises(ValidationError, match="other_order_id"):
        BaselineTask.model_validate(task)
    assert BaselineTask.model_validate({**task, "other_order_id": "ORD-00002"}).order_ids == ["ORD-00001", "ORD-00002"]


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text("node: agent-a\nllm_url: http://llm:8000/v1\npeers: {tool-db: http://b:8201/mcp}\n")
    with pytest.raises(ConfigError, match=r"agent-a needs .*peers\.agent-b"):
        load_config(path, "agent-a")
    path.write_text("node: b\nport: 99999\ndb_dsn: postgresql://x\n")
    with pytest.raises(ConfigError, match=r"field port"):
        load_config(path, "tool-db")
    with pytest.raises(ConfigError, match="unknown service"):
        load_config(path, "agent-c")
    json_path = tmp_path / "s.json"
    json_path.write_text(json.dumps({"node": "agent-b", "synth": {"fanout": 3}}))
    assert load_config(json_path, "tool-synth").synth.fanout == 3


def call_event(**fields: object) -> CallEvent:
    return CallEvent(
        **{
            "node": "n",
            "service": "agent-a",
            "agent_id": "agent-a",
            "task_id": "t1",
            "call_id": "ab" * 8,
            "parent_id": "cd" * 8,
            "trace_id": "ef" * 16,
            "kind": "tool",
            "side": "client",
            "peer": "tool-db",
            "op": "get_order",
            "start_ns": 1,
            **fields,
        }  # type: ignore[arg-type]
    )


def test_ids_round_trip_through_headers() -> None:
    event = call_event()
    headers = outgoing_headers(event)
    assert headers["traceparent"] == f"00-{'ef' * 16}-{'ab' * 8}-01"
    ctx = context_from_headers(headers)
    assert (ctx.task_id, ctx.trace_id, ctx.call_id) == ("t1", "ef" * 16, "ab" * 8)


def test_shipped_model_is_joined_and_a_wrong_checksum_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for model in (QWEN_05B, QWEN_15B):  # the shared cache, as the LLM server uses it
        path = materialise(model.name)
        assert path.stat().st_size == model.size and path.read_bytes()[:4] == b"GGUF"
    assert SHIPPED[DEFAULT_MODEL] == QWEN_15B
    bad = ShippedModel("bad", "part 1 only", QWEN_05B.parts[:1], QWEN_05B.part_files[:1], "0" * 64, 1, "0.9.0")
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


def test_telemetry_on_a_full_disk_drops_whole_events_and_never_fails_the_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A service's telemetry file on a disk that fills and frees again: every line in it is a whole
    event, write() never raises, and the service says on stderr how many it dropped."""
    require_root("a file system of its own (tmpfs)", ["mount", "umount"])
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "lab-test-telemetry", str(disk)], check=True)
    try:
        (disk / "filler").write_bytes(b"f" * (40 << 10))
        writer = EventWriter(disk / "agent-a.jsonl")
        padding = "x" * 700  # events of about 1 KB: the disk fills in the middle of one
        for n in range(100):
            writer.write(call_event(start_ns=n, error=padding))
        assert writer.dropped > 0
        (disk / "filler").unlink()  # room again
        writer.write(call_event(start_ns=1000))
        writer.close()
        written = (disk / "agent-a.jsonl").read_bytes()
    finally:
        subprocess.run(["umount", str(disk)], check=False)
    starts = [json.loads(line)["start_ns"] for line in written.decode().splitlines()]
    kept = len(starts) - 1
    assert starts == [*range(kept), 1000] and 0 < kept < 100 and written.endswith(b"\n")
    err = capsys.readouterr().err
    assert "agent-a.jsonl: No space left on device; dropping events" in err
    assert f"writing again, {100 - kept} event(s) dropped" in err
