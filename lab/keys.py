"""Keys and secrets the lab owns: one login key per lab and one host key per node, made before boot,
and the lab's service secrets (the database password)."""

from __future__ import annotations

import os
import secrets
import string
import subprocess
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError


@dataclass(frozen=True)
class KeyPair:
    private: Path

    @property
    def public_line(self) -> str:
        return self.private.with_suffix(".pub").read_text().strip()

    @property
    def public_key(self) -> str:
        """The key without its comment: "ssh-ed25519 AAAA..."."""
        return " ".join(self.public_line.split()[:2])


def ensure_keypair(private: Path, comment: str) -> KeyPair:
    """An ed25519 key at `private` (and `private`.pub), generated once and kept. An existing
    private key is never replaced (running nodes trust it); a missing .pub is rebuilt from it."""
    public = private.with_suffix(".pub")
    if private.is_file():
        if not public.is_file():
            public.write_text(_public_part(private))
        return KeyPair(private)
    private.parent.mkdir(parents=True, exist_ok=True)
    public.unlink(missing_ok=True)
    result = _ssh_keygen("-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(private))
    if result.returncode != 0:
        raise LabError(f"ssh-keygen failed for {private}: {result.stderr.strip()}; install openssh-client")
    private.chmod(0o600)
    return KeyPair(private)


def _public_part(private: Path) -> str:
    result = _ssh_keygen("-y", "-f", str(private))
    if result.returncode != 0:
        raise LabError(
            f"{private} is not a private key ssh-keygen can read ({result.stderr.strip()}); restore it, "
            "or run `lab teardown` (it removes the lab's keys) and `lab up` for new nodes with new keys"
        )
    return result.stdout


def _ssh_keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh-keygen", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)


def write_private(path: Path, text: str) -> None:
    """`text` in a file only its owner (the user the lab runs as: root for containers) may read,
    from the moment it exists; a file already there is truncated and gets the same mode."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        os.fchmod(fd, 0o600)
        handle.write(text)


def write_known_hosts(path: Path, entries: list[tuple[list[str], str]]) -> None:
    """known_hosts lines: every name/address of a node followed by its pinned host key."""
    lines = [f"{','.join(names)} {key}" for names, key in entries]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def ensure_secret(path: Path, length: int = 32) -> Path:
    """A random secret of letters and digits in `path`, made once and kept, readable by its owner only."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        alphabet = string.ascii_letters + string.digits
        write_private(path, "".join(secrets.choice(alphabet) for _ in range(length)))
    return path
