"""On the LLM node: how its copy of the model differs from the controller's manifest (on stdin, base64).

argv: the copy's directory, the name of its record of a complete copy. Prints JSON: `stale` (files
missing or of another size), `extra` (files the manifest does not list), `complete`, and the bytes
still to copy beside the free bytes where they go."""

import base64
import json
import os
import shutil
import sys

dest, record = sys.argv[1], sys.argv[2]
manifest = json.loads(base64.b64decode(sys.stdin.read()))
wanted = {f["path"]: f["size"] for f in manifest["files"]}
present = {}
for root, dirs, files in os.walk(dest):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    for name in files:
        if not name.startswith("."):
            path = os.path.join(root, name)
            present[os.path.relpath(path, dest)] = os.path.getsize(path)
try:
    with open(os.path.join(dest, record)) as handle:
        recorded = json.load(handle).get("digest")
except (OSError, ValueError):
    recorded = None
stale = sorted(p for p, size in wanted.items() if present.get(p) != size)
extra = sorted(set(present) - set(wanted))
existing = dest
while not os.path.isdir(existing):
    existing = os.path.dirname(existing)
print(
    json.dumps(
        {
            "stale": stale,
            "extra": extra,
            "complete": not stale and not extra and recorded == manifest["digest"],
            "missing_bytes": sum(max(wanted[p] - present.get(p, 0), 0) for p in stale),
            "free_bytes": shutil.disk_usage(existing).free,
        }
    )
)
