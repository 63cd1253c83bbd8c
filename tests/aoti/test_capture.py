import pytest
import torch

import aoti
from tests import tiny


def test_stop_mode_records_first_call_and_interrupts_the_run():
    model = tiny.MLP()
    reached_after = []
    with aoti.capture(model) as call:
        model(torch.randn(2, 32))
        reached_after.append(True)
    assert len(call) == 1 and not reached_after
    assert call.args[0].shape == (2, 32)
    assert "forward" not in model.__dict__  # eager forward is back


def test_record_mode_records_every_call_and_returns_real_outputs():
    model = tiny.MLP()
    with aoti.capture(model, stop=False) as calls:
        outs = [model(torch.randn(n, 32)) for n in (2, 3, 5)]
    assert [c.args[0].shape[0] for c in calls.calls] == [2, 3, 5]
    assert [o.shape for o in outs] == [(2, 16), (3, 16), (5, 16)]


def test_record_only_mode_records_every_call_and_runs_none():
    model = tiny.MLP()
    ran = []
    next(model.children()).register_forward_hook(lambda *_: ran.append(True))  # fires only if forward runs
    with aoti.capture(model, stop=False, run=False) as calls:
        outs = [model(torch.randn(n, 32)) for n in (2, 3)]
    assert [c.args[0].shape[0] for c in calls.calls] == [2, 3]
    assert outs == [None, None] and not ran
    assert "forward" not in model.__dict__


def test_capture_without_a_call_says_so():
    model = tiny.MLP()
    with aoti.capture(model) as call:
        pass
    with pytest.raises(RuntimeError, match="No call was captured"):
        _ = call.args
