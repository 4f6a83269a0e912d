"""The LLM node with a GPU, measured through the project's own server command.

Starts `python -m workload.llm serve --backend vllm --model DIR ...`, waits until it answers
(startup seconds), then drives it over loopback with one pooled httpx client:

- streamed chat completions, `--tokens` tokens out each (`ignore_eos`), at concurrency 1
  and 8: time to first token and inter-token latency, p50 and p90;
- connection reuse: requests per TCP connection of that one pooled client (distinct local
  ports it used).

The agents' decisions on this server (their real loop, native tool calls or JSON-schema
output, with answer accuracy) are measured by benchmarks/gpu_agents.py.

Prints a table and writes the figures as JSON to `--out`.

    python benchmarks/gpu_llm.py --model /models/qwen2.5-0.5b-hf --out gpu-05b.json
    python benchmarks/gpu_llm.py --dummy-shape qwen2.5-7b --tokenizer /models/qwen2.5-0.5b-hf --out gpu-7b.json

`--dummy-shape` serves a config-only model directory with `--load-format dummy` (random
weights, real compute): timing of a 7B-class model without its weights.

vLLM takes a Hugging Face directory, not a GGUF: `--convert-gguf FILE --model DIR` writes
the shipped GGUF as bf16 safetensors and exits; it needs transformers 4.x (5.x keeps GGUF
weights packed and refuses to save them), the `gguf` package and torch on the CPU.

Where vLLM runs without its optional `flashinfer` package, set VLLM_USE_FLASHINFER_SAMPLER=0
(vLLM 0.25 otherwise imports flashinfer for its sampler and the engine fails to start).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SERVED_NAME = "lab-model"
PROMPT = (
    "Write a detailed, friendly explanation for a customer of how parcel tracking works, from the moment an "
    "order is paid until it is delivered, with the steps a shop, a carrier and a hub take."
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "generation_config.json",
)
# Config of a Qwen2.5-7B-Instruct-shaped model (the published config.json's shape fields).
DUMMY_SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-7b": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 32768,
        "max_window_layers": 28,
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "sliding_window": 131072,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
        "vocab_size": 152064,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    },
}


class BenchError(RuntimeError):
    """A one-line reason the benchmark cannot go on."""


# ---------------------------------------------------------------- arguments


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} must be in (0, 1]")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmarks/gpu_llm.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, help="Hugging Face model directory (config.json, tokenizer, safetensors)")
    p.add_argument(
        "--dummy-shape",
        choices=sorted(DUMMY_SHAPES),
        help="serve a config-only model of this shape with --load-format dummy (random weights)",
    )
    p.add_argument("--tokenizer", type=Path, help="with --dummy-shape: a model directory whose tokenizer files to use")
    p.add_argument(
        "--convert-gguf",
        type=Path,
        metavar="GGUF",
        help="write this GGUF as a bf16 safetensors directory at --model, then exit",
    )
    p.add_argument("--out", type=Path, help="write the figures as JSON here")
    p.add_argument(
        "--backend",
        choices=["vllm", "cpu"],
        default="vllm",
        help="server backend of workload.llm (cpu: llama.cpp with a GGUF, to try the client side)",
    )
    p.add_argument("--port", type=positive_int, default=8011)
    p.add_argument("--max-model-len", type=positive_int, default=8192)
    p.add_argument("--gpu-memory-utilization", type=fraction, default=0.9)
    p.add_argument(
        "--tool-call-parser",
        default="hermes",
        help="vLLM tool parser for the model (hermes: Qwen2.5; workload.llm's default llama3_json fails "
        "every chat request on a tokenizer without <|python_tag|>)",
    )
    p.add_argument("--tokens", type=positive_int, default=128, help="tokens out per streamed request")
    p.add_argument("--requests", type=positive_int, default=16, help="streamed requests per concurrency level")
    p.add_argument("--concurrency", type=positive_int, nargs="+", default=[1, 8])
    p.add_argument(
        "--reuse-requests",
        type=positive_int,
        default=4,
        help="sequential streamed requests of the connection-reuse check",
    )
    p.add_argument("--startup-timeout", type=positive_int, default=900, help="seconds to wait for the server")
    p.add_argument("--log", type=Path, help="server log file (default: beside --out, or a temporary file)")
    args = p.parse_args(argv)
    if args.convert_gguf is not None:
        if args.model is None:
            p.error("--convert-gguf needs --model DIR to write to")
        if not args.convert_gguf.is_file():
            p.error(f"--convert-gguf {args.convert_gguf}: no such file")
        return args
    if (args.model is None) == (args.dummy_shape is None):
        p.error("give exactly one of --model DIR and --dummy-shape SHAPE")
    if args.dummy_shape and args.tokenizer is None:
        p.error("--dummy-shape needs --tokenizer DIR (a model directory with tokenizer.json)")
    if args.dummy_shape and args.backend != "vllm":
        p.error("--dummy-shape needs --backend vllm")
    if args.model is not None and args.backend == "vllm" and not (args.model / "config.json").is_file():
        p.error(f"--model {args.model}: no config.json there (vLLM needs a Hugging Face directory)")
    if args.model is not None and args.backend == "cpu" and not args.model.is_file() and args.model.suffix:
        p.error(f"--model {args.model}: no such GGUF file")
    if args.tokenizer is not None and not (args.tokenizer / "tokenizer.json").is_file():
        p.error(f"--tokenizer {args.tokenizer}: no tokenizer.json there")
    return args


# ---------------------------------------------------------------- model directories


def convert_gguf(gguf: Path, out: Path) -> float:
    """GGUF -> bf16 safetensors directory (transformers 4.x dequantises); seconds taken."""
    start = time.monotonic()
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise BenchError(f"--convert-gguf needs torch, transformers<5 and gguf: {exc}") from exc
    if int(transformers.__version__.split(".")[0]) >= 5:
        raise BenchError(
            f"--convert-gguf needs transformers 4.x (found {transformers.__version__}: 5.x cannot save "
            "GGUF-loaded weights)"
        )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return time.monotonic() - start


def dummy_model_dir(shape: str, tokenizer_dir: Path, parent: Path) -> Path:
    """A config-only model directory of `shape` with the tokenizer files of `tokenizer_dir`."""
    target = parent / f"dummy-{shape}"
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(DUMMY_SHAPES[shape], indent=2))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file() and name != "generation_config.json":
            shutil.copyfile(tokenizer_dir / name, target / name)
    return target


# ---------------------------------------------------------------- the server


def server_argv(args: argparse.Namespace, model: Path, dummy: bool) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "workload.llm",
        "serve",
        "--backend",
        args.backend,
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--served-name",
        SERVED_NAME,
    ]
    if args.backend == "vllm":
        argv += [
            "--max-model-len",
            str(args.max_model_len),
            "--gpu-memory-utilization",
            str(args.gpu_memory_utilization),
            f"--tool-call-parser={args.tool_call_parser}",
        ]
        if dummy:
            argv += ["--vllm-arg=--load-format=dummy"]
    else:
        argv += ["--ctx", "8192", "--parallel", "2", "--threads", "2"]
    return argv


def start_server(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    print(f"server: {' '.join(argv)}\nserver log: {log_path}", flush=True)
    with open(log_path, "wb") as log:  # the server keeps its own copy of the descriptor
        return subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def log_tail(log_path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(proc: subprocess.Popen[bytes], base: str, timeout_s: float, log_path: Path) -> float:
    """Seconds until GET /v1/models answers 200; BenchError if the server dies or times out."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if proc.poll() is not None:
            raise BenchError(
                f"server exited with {proc.returncode} before it was ready; log tail:\n{log_tail(log_path)}"
            )
        try:
            if httpx.get(f"{base}/v1/models", timeout=2).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise BenchError(f"server not ready after {timeout_s} s; log tail:\n{log_tail(log_path)}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---------------------------------------------------------------- requests


@dataclass
class Stream:
    """One streamed chat completion as the client saw it."""

    ttft_s: float
    total_s: float
    token_times: list[float]  # arrival of each content chunk, seconds after the request was sent
    text: str
    local_port: int | None
    completion_tokens: int | None

    @property
    def itl_s(self) -> list[float]:
        return [b - a for a, b in pairwise(self.token_times)]


@dataclass
class Ports:
    """Local ports of every request the pooled client made, by phase."""

    by_phase: dict[str, list[int | None]] = field(default_factory=dict)

    def add(self, phase: str, port: int | None) -> None:
        self.by_phase.setdefault(phase, []).append(port)

    def summary(self) -> dict[str, Any]:
        def one(ports: list[int | None]) -> dict[str, Any]:
            known = [p for p in ports if p is not None]
            conns = len(set(known))
            return {
                "requests": len(ports),
                "connections": conns,
                "requests_per_connection": round(len(known) / conns, 2) if conns else None,
            }

        every = [p for ports in self.by_phase.values() for p in ports]
        return {"all": one(every), **{phase: one(ports) for phase, ports in self.by_phase.items()}}


def local_port(response: httpx.Response) -> int | None:
    stream = response.extensions.get("network_stream")
    addr = stream.get_extra_info("client_addr") if stream is not None else None
    return int(addr[1]) if addr else None


async def stream_chat(client: httpx.AsyncClient, body: dict[str, Any]) -> Stream:
    """POST a streamed chat completion; time each content chunk."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    times: list[float] = []
    parts: list[str] = []
    usage: int | None = None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            detail = (await response.aread()).decode(errors="replace")[:300]
            raise BenchError(f"chat completion answered {response.status_code}: {detail}")
        port = local_port(response)
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                usage = chunk["usage"].get("completion_tokens")
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    times.append(time.perf_counter() - start)
                    parts.append(content)
    total = time.perf_counter() - start
    if not times:
        raise BenchError("a streamed chat completion returned no content")
    return Stream(times[0], total, times, "".join(parts), port, usage)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


async def streaming_level(
    client: httpx.AsyncClient, ports: Ports, concurrency: int, requests: int, tokens: int
) -> dict[str, Any]:
    """`requests` streamed completions, `concurrency` at a time; TTFT and ITL percentiles."""
    body = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    gate = asyncio.Semaphore(concurrency)

    async def one() -> Stream:
        async with gate:
            return await stream_chat(client, body)

    start = time.perf_counter()
    streams = await asyncio.gather(*(one() for _ in range(requests)))
    wall = time.perf_counter() - start
    for s in streams:
        ports.add(f"stream_c{concurrency}", s.local_port)
    ttfts = [s.ttft_s for s in streams]
    itls = [gap for s in streams for gap in s.itl_s]
    chunks = sum(len(s.token_times) for s in streams)
    tokens_out = sum(s.completion_tokens or len(s.token_times) for s in streams)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "tokens_per_request": tokens,
        "ttft_ms_p50": ms(percentile(ttfts, 50)),
        "ttft_ms_p90": ms(percentile(ttfts, 90)),
        "itl_ms_p50": ms(percentile(itls, 50)),
        "itl_ms_p90": ms(percentile(itls, 90)),
        "content_chunks": chunks,
        "completion_tokens": tokens_out,
        "output_tokens_per_s": round(tokens_out / wall, 1),
        "wall_s": round(wall, 3),
    }


async def reuse_check(client: httpx.AsyncClient, ports: Ports, count: int) -> None:
    """`count` sequential short streamed requests on the pooled client."""
    body = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8,
        "temperature": 0,
        "ignore_eos": True,
    }
    for _ in range(count):
        ports.add("sequential", (await stream_chat(client, body)).local_port)


async def measure(args: argparse.Namespace, base: str) -> dict[str, Any]:
    ports = Ports()
    limits = httpx.Limits(
        max_connections=max(args.concurrency) + 2, max_keepalive_connections=max(args.concurrency) + 2
    )
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(300.0), limits=limits) as client:
        warm = await stream_chat(
            client,
            {
                "model": SERVED_NAME,
                "messages": [{"role": "user", "content": PROMPT}],
                "max_tokens": args.tokens,
                "temperature": 0,
                "ignore_eos": True,
            },
        )
        ports.add("warmup", warm.local_port)
        result: dict[str, Any] = {"first_request_s": round(warm.total_s, 3), "streaming": []}
        await reuse_check(client, ports, args.reuse_requests)
        for level in args.concurrency:
            result["streaming"].append(await streaming_level(client, ports, level, args.requests, args.tokens))
    result["connections"] = ports.summary()
    return result


# ---------------------------------------------------------------- report


def environment() -> dict[str, Any]:
    info: dict[str, Any] = {"python": sys.version.split()[0]}
    for name in ("vllm", "torch", "transformers"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - absent or broken: recorded as such
            info[name] = None
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
        info["gpu"] = gpu or None
    except (OSError, subprocess.SubprocessError):
        info["gpu"] = None
    return info


def table(report: dict[str, Any]) -> str:
    lines = [
        f"model: {report['model']}  ({report['weights']})",
        f"server ready: {report['startup_s']} s   first request: {report['first_request_s']} s",
        f"{'conc':>4} {'reqs':>5} {'TTFT p50':>9} {'TTFT p90':>9} {'ITL p50':>8} {'ITL p90':>8} {'tok/s':>8}  (ms)",
    ]
    for lvl in report["streaming"]:
        lines.append(
            f"{lvl['concurrency']:>4} {lvl['requests']:>5} {lvl['ttft_ms_p50']:>9} {lvl['ttft_ms_p90']:>9} "
            f"{lvl['itl_ms_p50']:>8} {lvl['itl_ms_p90']:>8} {lvl['output_tokens_per_s']:>8}"
        )
    conn = report["connections"]["all"]
    lines.append(
        f"connections: {conn['requests']} requests over {conn['connections']} TCP connections "
        f"({conn['requests_per_connection']} per connection); sequential: "
        f"{report['connections'].get('sequential', {}).get('requests_per_connection')} per connection"
    )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="gpu-llm-"))
    dummy = args.dummy_shape is not None
    model = dummy_model_dir(args.dummy_shape, args.tokenizer, work) if dummy else args.model
    log_path = args.log or (args.out.with_suffix(".server.log") if args.out else work / "server.log")
    base = f"http://127.0.0.1:{args.port}"
    try:
        httpx.get(f"{base}/v1/models", timeout=1)
        raise BenchError(f"port {args.port} already answers: stop that server or pass --port")
    except httpx.HTTPError:
        pass
    argv = server_argv(args, model, dummy)
    proc = start_server(argv, log_path)
    try:
        startup = wait_ready(proc, base, args.startup_timeout, log_path)
        print(f"server ready after {startup:.1f} s", flush=True)
        figures = asyncio.run(measure(args, base))
    finally:
        stop_server(proc)
    return {
        "model": args.dummy_shape or str(args.model),
        "weights": "dummy (random)" if dummy else "real",
        "backend": args.backend,
        "server_argv": argv,
        "startup_s": round(startup, 1),
        "max_model_len": args.max_model_len,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "environment": environment(),
        **figures,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.convert_gguf is not None:
            seconds = convert_gguf(args.convert_gguf, args.model)
            print(f"converted {args.convert_gguf} -> {args.model} in {seconds:.1f} s")
            return 0
        report = run(args)
    except (BenchError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
