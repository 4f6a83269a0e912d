"""`python -m workload.llm serve --model PATH_OR_NAME --host H --port P`
and `python -m workload.llm materialise --model NAME` (prints path and sha256)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path

from workload.llm import (
    BACKENDS,
    DEFAULT_MODEL,
    DEFAULT_THREADS,
    TOKEN_ENV,
    ModelError,
    materialise,
    sha256_of,
)

SERVED_NAME = "lab-model"


def has_gpu() -> bool:
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def vllm_argv(
    model: str,
    host: str,
    port: int,
    served_name: str,
    max_model_len: int | None = None,
    gpu_memory_utilization: float | None = None,
    extra: list[str] | None = None,
    tool_call_parser: str = "llama3_json",
) -> list[str]:
    """vLLM's OpenAI-compatible server with tool calling enabled. The tool parser must match the
    model's chat template: `llama3_json` for Llama 3.x, `hermes` for Qwen2.5 (with llama3_json
    every Qwen chat request failed on an H200: "could not locate the bot token")."""
    argv = [
        "vllm",
        "serve",
        model,
        "--host",
        host,
        "--port",
        str(port),
        "--served-model-name",
        served_name,
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        tool_call_parser,
    ]
    if max_model_len is not None:
        argv += ["--max-model-len", str(max_model_len)]
    if gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    return argv + list(extra or [])


def serve_cpu(
    model_path: Path,
    host: str,
    port: int,
    threads: int,
    ctx: int,
    parallel: int,
    served_name: str,
    front: bool = True,
    token: str | None = None,
) -> None:
    """Run llama.cpp's OpenAI-compatible server (xllamacpp) until SIGTERM/SIGINT: behind the
    keep-alive front on host:port (workload/llm/front.py), or itself on host:port (`front=False`)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(model_path)
    params.hostnames = ["127.0.0.1" if front else host]
    params.port = _free_loopback_port() if front else port
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.n_ctx = ctx * parallel
    params.n_parallel = parallel
    params.model_alias = {served_name}
    # the model's own Jinja chat template, which is what lets llama.cpp parse tool calls (`--jinja`)
    params.use_jinja = True
    if token:
        params.api_keys = [token]  # the front passes the caller's Authorization header through
    server = xllamacpp.Server(params)
    print(f"llm: serving {model_path} as {served_name!r} at {server.listening_address}", flush=True)
    if front:
        import uvicorn

        from workload.llm.front import KEEP_ALIVE_S, app

        print(f"llm: keep-alive front ({KEEP_ALIVE_S} s, as vLLM's) on {host}:{port}", flush=True)
        uvicorn.run(
            app(f"http://127.0.0.1:{params.port}"),
            host=host,
            port=port,
            log_level="warning",
            timeout_keep_alive=KEEP_ALIVE_S,
        )
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()


def _free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workload.llm")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the LLM server")
    serve.add_argument("--model", default=DEFAULT_MODEL, help="GGUF path, shipped model name, or (vLLM) model dir/id")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--backend", choices=BACKENDS, default="auto")
    serve.add_argument("--threads", type=int, default=DEFAULT_THREADS)
    serve.add_argument("--ctx", type=int, default=8192, help="context tokens per parallel slot")
    serve.add_argument("--parallel", type=int, default=2)
    serve.add_argument("--served-name", default=SERVED_NAME)
    serve.add_argument(
        "--no-front",
        dest="front",
        action="store_false",
        help="CPU: llama.cpp's own HTTP server on --port, without the keep-alive front "
        "(it closes a connection after each streamed answer)",
    )
    serve.add_argument("--max-model-len", type=int, help="vLLM: context length (default: the model's own)")
    serve.add_argument("--gpu-memory-utilization", type=float, help="vLLM: share of GPU memory to take")
    serve.add_argument("--tool-call-parser", default="llama3_json", help="vLLM: the tool parser of the model's family")
    serve.add_argument("--vllm-arg", action="append", default=[], help="vLLM: one more argument (--vllm-arg=--x=y)")
    mat = sub.add_parser("materialise", help="join a shipped model into the cache; print path and sha256")
    mat.add_argument("--model", default=DEFAULT_MODEL)
    mat.add_argument("--cache-dir", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "materialise":
            path = materialise(args.model, args.cache_dir)
            print(f"{path} sha256={sha256_of(path)}")
        elif args.backend == "vllm" or (args.backend == "auto" and has_gpu()):
            argv_ = vllm_argv(
                args.model,
                args.host,
                args.port,
                args.served_name,
                args.max_model_len,
                args.gpu_memory_utilization,
                args.vllm_arg,
                args.tool_call_parser,
            )
            if token := os.environ.get(TOKEN_ENV):
                os.environ["VLLM_API_KEY"] = token  # vLLM's --api-key, from its environment
            os.execvp(argv_[0], argv_)
        else:
            serve_cpu(
                materialise(args.model),
                args.host,
                args.port,
                args.threads,
                args.ctx,
                args.parallel,
                args.served_name,
                args.front,
                os.environ.get(TOKEN_ENV),
            )
    except (ModelError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
