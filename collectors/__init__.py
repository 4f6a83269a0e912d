"""Probes that run on a lab node: bpftrace programs and a packet capture, started by a small
stdlib-only runner (`python3 -m collectors run`) that tags their output and writes JSONL."""
