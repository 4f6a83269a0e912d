"""A lab's name is held on the host by one lab directory at a time: the provider names the
containers, bridge, libvirt network and domains after it, so a second directory with the same
name would stop and remove the first lab's nodes."""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import state
from lab.config import load_config
from tests.conftest import write_lab


@pytest.fixture(autouse=True)
def names(tmp_path, monkeypatch) -> Path:
    directory = tmp_path / "names"
    monkeypatch.setattr(state, "NAMES_DIR", directory)
    return directory


def lab_in(directory: Path, name: str = "same"):
    directory.mkdir()
    return load_config(write_lab(directory, name, "10.99.0"))


def test_a_name_held_by_another_live_lab_is_refused_naming_it_and_the_fix(tmp_path):
    first, second = lab_in(tmp_path / "one"), lab_in(tmp_path / "two")
    state.claim_name(first)
    first.state_dir.mkdir()
    with pytest.raises(state.NameTaken) as refused:
        state.claim_name(second)
    message = str(refused.value)
    assert str(tmp_path / "one") in message and "`name:`" in message and "lab teardown" in message
    assert state.name_holder(second) == first.state_dir


def test_the_holder_claims_again_and_a_released_name_is_free(tmp_path):
    first, second = lab_in(tmp_path / "one"), lab_in(tmp_path / "two")
    state.claim_name(first)
    first.state_dir.mkdir()
    state.claim_name(first)  # `lab up` again in the same directory
    state.release_name(second)  # not its name: nothing happens
    assert state.name_holder(second) == first.state_dir
    state.release_name(first)
    state.claim_name(second)
    second.state_dir.mkdir()
    assert state.name_holder(first) == second.state_dir


def test_a_holder_whose_directory_is_gone_holds_nothing(tmp_path, names):
    first, second = lab_in(tmp_path / "one"), lab_in(tmp_path / "two")
    state.claim_name(first)  # its .lab never made (an up that failed first) or deleted by hand
    assert state.name_holder(second) is None
    state.claim_name(second)
    assert (names / "same").read_text().strip() == str(second.state_dir)
    assert [p.name for p in names.iterdir()] == ["same"]  # no temporary file left


def test_other_names_do_not_meet(tmp_path):
    first, second = lab_in(tmp_path / "one", "al"), lab_in(tmp_path / "two", "be")
    state.claim_name(first)
    first.state_dir.mkdir()
    state.claim_name(second)
    assert state.name_holder(first) is None and state.name_holder(second) is None
