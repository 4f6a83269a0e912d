"""Which analysis code wrote a run's tables: a digest of analysis/*.py, recorded in
analysis.json, so `lab export` re-analyses exactly the runs whose tables another version wrote
(modification times cannot tell: a copied run looks newer than the code)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path


@functools.cache
def code_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
