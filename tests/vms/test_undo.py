"""Undo after a failed `up`: every step runs, the last first; nothing is swallowed or masks the cause."""

from __future__ import annotations

from lab.errors import LabError
from vms.base import Undo


class Gone(Exception):
    pass


def test_every_step_runs_last_first_and_a_failing_one_is_said_and_named_in_the_error():
    done, said = [], []
    undo = Undo(gone=lambda exc: isinstance(exc, Gone))
    undo.push("bridge b", lambda: done.append("bridge"))
    undo.push("volume v", lambda: (_ for _ in ()).throw(OSError("device busy")))
    undo.push("domain d", lambda: (_ for _ in ()).throw(Gone()))
    undo.push("container c", lambda: done.append("container"))
    raised = undo.failed(LabError("agent-a did not answer SSH within 5 s"), said.append)
    assert done == ["container", "bridge"]  # the failing step did not stop the bridge's removal
    assert isinstance(raised, LabError)
    assert str(raised) == (
        "agent-a did not answer SSH within 5 s; undo could not remove volume v "
        "(OSError: device busy): run `lab teardown`"
    )
    assert said == ["up failed; removing what this run created", "could not remove volume v (OSError: device busy)"]


def test_the_cause_is_raised_as_it_is_when_undo_left_nothing_or_it_is_no_lab_error():
    undo = Undo()
    cause = LabError("no")
    assert undo.failed(cause, lambda _msg: None) is cause
    interrupted = KeyboardInterrupt()
    undo.push("x", lambda: (_ for _ in ()).throw(OSError("busy")))
    assert undo.failed(interrupted, lambda _msg: None) is interrupted
