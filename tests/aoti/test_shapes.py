import pytest
import torch

from aoti.capture import CapturedCall
from aoti.options import CompileOptions, DimRange
from aoti.shapes import plan_graphs
from tests import tiny


def _calls(*sizes):
    return [CapturedCall((torch.randn(1, s, 32),), {}) for s in sizes]


def test_dynamic_plan_gives_size_one_its_own_static_graph():
    plans = plan_graphs(_calls(1, 4, 8, 12), CompileOptions(dispatch="dynamic"), tiny.MLP())
    static = [p for p in plans if not p.dynamic]
    dynamic = [p for p in plans if p.dynamic]
    assert [p.call.args[0].shape[1] for p in static] == [1]
    assert len(dynamic) == 1
    hint = dynamic[0].dynamic[0][1]
    assert (hint.min, hint.max) == (4, 12)


def test_static_sizes_get_a_static_graph_each_before_the_dynamic_one():
    """A speculative verify length among the prefill lengths: its own static graph (a CUDA graph on a
    GPU), listed before the dynamic graph, which still spans the other lengths."""
    plans = plan_graphs(_calls(1, 2, 5, 12), CompileOptions(dispatch="dynamic", static_sizes=(5,)), tiny.MLP())
    assert [(p.call.args[0].shape[1], bool(p.dynamic)) for p in plans] == [(1, False), (5, False), (2, True)]
    hint = plans[-1].dynamic[0][1]
    assert (hint.min, hint.max) == (2, 12)
    assert CompileOptions.from_dict(CompileOptions(static_sizes=(5,)).to_dict()).static_sizes == (5,)


def test_bucket_plan_has_one_graph_per_distinct_shape():
    plans = plan_graphs(_calls(4, 8, 4, 12), CompileOptions(dispatch="buckets"), tiny.MLP())
    assert [p.call.args[0].shape[1] for p in plans] == [4, 8, 12]


def test_options_validate_with_actionable_messages():
    with pytest.raises(ValueError, match="min"):
        DimRange(1, 8)
    with pytest.raises(ValueError, match="dispatch"):
        CompileOptions(dispatch="sometimes")
    with pytest.raises(ValueError, match="preset"):
        CompileOptions(preset="fastest")


def test_options_round_trip_through_json():
    opts = CompileOptions(dispatch="dynamic", dynamic_dims=(("x", 1, DimRange(2, 64)),), preset="max-autotune")
    assert CompileOptions.from_dict(opts.to_dict()) == opts


def test_decode_preset_builds_combo_kernels_on_cuda_only():
    decode = CompileOptions(preset="decode")
    assert decode.inductor_configs("cuda")["combo_kernels"] is True
    assert "combo_kernels" not in decode.inductor_configs("cpu")
    assert "combo_kernels" not in CompileOptions().inductor_configs("cuda")
    # the engine's fallback build (decode kernels off) takes Inductor's usual path
    from engines.recipes import Recipe

    fallback = Recipe((), decode).without_decode_kernels().options
    assert "combo_kernels" not in fallback.inductor_configs("cuda")
    # weights stay outside the package on every device
    assert decode.inductor_configs("cpu")["aot_inductor.package_constants_in_so"] is False
