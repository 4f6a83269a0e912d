"""The lab's SSH keys: made once, kept, never replaced behind the user's back (real ssh-keygen)."""

from __future__ import annotations

import re
import stat

import pytest

from lab.errors import LabError
from lab.keys import ensure_keypair, ensure_secret


def test_a_key_is_made_once_with_a_private_part_only_its_owner_reads(tmp_path):
    key = ensure_keypair(tmp_path / "ssh" / "id_ed25519", "t-login")
    assert key.public_line.startswith("ssh-ed25519 ") and key.public_line.endswith(" t-login")
    assert key.private.stat().st_mode & 0o777 == 0o600
    private = key.private.read_bytes()
    assert ensure_keypair(key.private, "t-login").private.read_bytes() == private


def test_a_missing_pub_is_rebuilt_from_the_private_key_which_is_kept(tmp_path):
    """Running nodes accept the private key the lab has: a new one would lock the controller out."""
    key = ensure_keypair(tmp_path / "id_ed25519", "t-login")
    private, public = key.private.read_bytes(), key.public_line
    key.private.with_suffix(".pub").unlink()
    again = ensure_keypair(key.private, "t-login")
    assert again.private.read_bytes() == private
    assert again.public_line == public


def test_an_unreadable_private_key_is_an_error_and_is_left_alone(tmp_path):
    private = tmp_path / "id_ed25519"
    private.write_text("not a key\n")
    private.chmod(0o600)
    expected = rf"{re.escape(str(private))} is not a private key ssh-keygen can read .*; restore it"
    with pytest.raises(LabError, match=expected):
        ensure_keypair(private, "t-login")
    assert private.read_text() == "not a key\n"
    assert not private.with_suffix(".pub").exists()


def test_a_pub_without_its_private_key_is_replaced_by_a_new_pair(tmp_path):
    stale = tmp_path / "id_ed25519.pub"
    stale.write_text("ssh-ed25519 AAAAstale old\n")
    key = ensure_keypair(tmp_path / "id_ed25519", "t-login")
    assert key.private.is_file() and "AAAAstale" not in key.public_line


def test_a_secret_is_made_once_for_its_owner_only(tmp_path):
    path = ensure_secret(tmp_path / "secrets" / "db_password")
    first = path.read_text()
    assert len(first) == 32 and first.isalnum()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert ensure_secret(path).read_text() == first
