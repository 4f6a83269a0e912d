"""workload.bench names the LLM server that ran: the backend as the server names itself and the
threads it was started with, here a real llama.cpp server on loopback started with one thread."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from workload import bench
from workload.llm import FAST_MODEL
from workload.local import LocalStack


def test_the_llm_line_names_the_backend_and_threads_that_ran() -> None:
    with tempfile.TemporaryDirectory(prefix="workload-bench-test-") as tmp:
        stack = LocalStack(Path(tmp), db_dsn="postgresql://unused")
        try:
            stack.start_llm(FAST_MODEL, backend="cpu", threads=1)
            label = bench.llm_label(stack.url("llm"), 1, stack.token)
        finally:
            stack.stop()
        log = (Path(tmp) / "llm.log").read_text()
    assert label == "llama.cpp on the CPU, 1 thread"
    assert re.search(r"n_threads = 1\b", log), log[-2000:]  # what the server itself says it runs with
