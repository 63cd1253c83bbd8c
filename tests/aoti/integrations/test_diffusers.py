"""aoti.integrations.diffusers: FLUX attention's processors on the fused norm + rotary kernel (the
`FuseFluxNormRope` transform), swapped in and back; calls the kernel does not serve go to diffusers."""

from __future__ import annotations

import torch

import aoti
from aoti.integrations.diffusers import FusedFluxAttnProcessor
from aoti.kernels.support import available
from tests import tiny
from tests.interpreted import needs_triton


def test_the_transform_swaps_the_processors_and_restore_gives_them_back():
    model = tiny.flux()
    originals = [m.processor for m in model.modules() if hasattr(m, "processor")]
    fallbacks = aoti.transform(model, [aoti.FuseFluxNormRope()])
    fused = [m.processor for m in model.modules() if hasattr(m, "processor")]
    if available():
        assert fallbacks == [] and all(isinstance(p, FusedFluxAttnProcessor) for p in fused) and len(fused) == 2
    else:
        assert fallbacks and fallbacks[0].startswith("FuseFluxNormRope -> skipped")
    aoti.restore(model)
    assert [m.processor for m in model.modules() if hasattr(m, "processor")] == originals


@needs_triton
def test_processor_leaves_calls_the_kernel_does_not_serve_to_diffusers():
    model, inputs = tiny.flux(), tiny.flux_inputs()
    with torch.no_grad():
        ref = model(**inputs)[0]
        aoti.transform(model, [aoti.FuseFluxNormRope()])  # CPU tensors, no interpreter: diffusers' own path
        out = model(**inputs)[0]
    assert torch.equal(out, ref)
