"""aoti.transforms.decode: one-row linear layers routed to `aoti.kernels.gemv` (`OneRowKernels`), and
undone; the decode-kernel build that fails falls back to one without them, once (the engine's recipe)."""

from __future__ import annotations

import textwrap

import pytest
import torch

import aoti
from aoti.transforms.decode import GemvLinear, use_gemv
from aoti.transforms.quantize import RowwiseFloat8Linear
from tests.interpreted import needs_triton, run_interpreted


@needs_triton
def test_routing_keeps_parameters_and_state_and_can_be_undone():
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model[0].weight
    assert use_gemv(model) == 2
    assert type(model[0]) is GemvLinear and model[0].weight is weight
    assert model.state_dict().keys() == state.keys()
    x = torch.randn(1, 8)
    # On the CPU (no interpreter) the routed layer is F.linear itself.
    torch.testing.assert_close(model(x), torch.nn.functional.linear(
        torch.relu(torch.nn.functional.linear(x, state["0.weight"], state["0.bias"])), state["2.weight"], state["2.bias"]))
    assert use_gemv(model, enabled=False) == 0
    assert type(model[0]) is torch.nn.Linear and type(model[2]) is torch.nn.Linear


@needs_triton
def test_only_plain_linear_layers_and_fp8_layers_are_routed():
    mha = torch.nn.MultiheadAttention(16, 2)  # its out_proj is an nn.Linear subclass read by weight, never called
    fp8 = RowwiseFloat8Linear.from_linear(torch.nn.Linear(16, 16))
    assert not fp8.one_row_kernel  # FP8 layers keep `_scaled_mm` until routed
    assert use_gemv(torch.nn.ModuleDict({"mha": mha, "fp8": fp8})) == 1
    assert type(mha.out_proj) is torch.nn.modules.linear.NonDynamicallyQuantizableLinear
    assert fp8.one_row_kernel


def test_the_decode_kernels_are_skipped_on_the_cpu_with_the_reason():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    fallbacks = aoti.transform(model, [aoti.OneRowKernels()])
    assert fallbacks == ["OneRowKernels -> skipped: the decode kernels need a CUDA GPU; this device is the CPU"]
    assert type(model[0]) is torch.nn.Linear and aoti.transforms_of(model) == ()


@needs_triton
def test_int8_weights_are_not_routed():
    pytest.importorskip("torchao")
    model = torch.nn.Sequential(torch.nn.Linear(32, 32))
    aoti.transform(model, [aoti.Int8WeightOnly()])
    assert use_gemv(model) == 0  # torchao's subclass weights are not the kernel's to read
    use_gemv(model, enabled=False)


# A build whose graphs can't hold the kernel falls back to one without it, and remembers that. Under
# the interpreter `torch.export` can't trace the kernel (it runs it on fake tensors and fails): a real
# build failure, of the kind Inductor's C++ wrapper has had on GPUs now and then.
FALLBACK = textwrap.dedent("""
    import sys, time, torch, aoti
    from engines.optimize import optimize_module
    from engines.recipes import Recipe

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))

    def calls_of(module):
        with aoti.capture(module) as call:
            module(torch.randn(1, 32))
        return lambda: call

    cache = aoti.Cache(sys.argv[1])
    recipe = Recipe((aoti.OneRowKernels(),), aoti.CompileOptions(preset="decode"))
    first = model()
    status, ref = optimize_module(first, calls_of(first), recipe, cache, None)
    assert status.runtime == "aoti" and status.fallbacks[0].startswith("decode kernels -> off: the build with them failed"), status.fallbacks
    assert ref["transforms"] == [] and aoti.transforms_of(first) == ()  # eager is unrouted again, as the graphs are
    assert type(first[0]) is torch.nn.Linear
    x = torch.randn(1, 32)
    with aoti.eager(first):
        eager = first(x)
    torch.testing.assert_close(first(x), eager)

    second = model()  # a new process would do the same: no second try of the failed build
    start = time.perf_counter()
    status, again = optimize_module(second, calls_of(second), recipe, cache, None)
    assert status.cache_hit and "an earlier build of package" in status.fallbacks[0], status.fallbacks
    assert again["key"] == ref["key"]
    print("ok", round(time.perf_counter() - start, 2))
""")


@needs_triton
def test_a_failed_build_with_the_kernel_falls_back_once_and_is_remembered(tmp_path):
    assert run_interpreted(FALLBACK, str(tmp_path)).splitlines()[-1].startswith("ok")
