"""Host process helpers on real processes."""

from __future__ import annotations

import subprocess
import sys
import time

from vms import host

# A parent that never reaps: its child, once killed, stays a zombie that is not ours to reap
# (as under a PID 1 that reaps nothing).
NEGLECTFUL_PARENT = """
import os, sys, time
child = os.fork()
if child == 0:
    time.sleep(300)
    os._exit(0)
print(child, flush=True)
time.sleep(300)
"""


def test_another_processs_zombie_counts_as_stopped():
    parent = subprocess.Popen([sys.executable, "-c", NEGLECTFUL_PARENT], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert host.alive(child)
        started = time.monotonic()
        assert host.stop_process(child, grace=5) is False  # SIGTERM was enough
        assert time.monotonic() - started < 5
        assert not host.alive(child)
        assert open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"  # still listed: a zombie
    finally:
        parent.kill()
        parent.wait()


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace():
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(300)",
        ],
        stdout=subprocess.PIPE,
    )
    child.stdout.readline()
    assert host.stop_process(child.pid, grace=0.5) is True
    assert not host.alive(child.pid)
