import torch

import aoti
from aoti.regional import group_blocks
from tests import tiny


def test_flux_blocks_share_one_package_per_signature(cache):
    model = tiny.flux(num_layers=2, num_single_layers=2)
    with aoti.capture(model) as call, torch.no_grad():
        model(**tiny.flux_inputs())
    artifact = aoti.compile(model, call, aoti.CompileOptions(regional=True), cache=cache)
    assert [len(names) for names, _ in artifact.parts] == [2, 2]  # 4 blocks, 2 packages
    status = aoti.apply(artifact, model)
    assert status.runtime == "aoti" and "2 packages for 4 blocks" in status.reason
    inputs = tiny.flux_inputs()
    with torch.no_grad():
        compiled = model(**inputs)[0]
        aoti.restore(model)
        eager = model(**inputs)[0]
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-5)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_unet_blocks_of_one_class_with_different_shapes_get_separate_packages(cache):
    model = tiny.unet()
    groups = group_blocks(model)
    assert len(groups) >= 2  # BasicTransformerBlock at 8 and 16 channels
    with aoti.capture(model) as call, torch.no_grad():
        model(**tiny.unet_inputs())
    regional = aoti.compile(model, call, aoti.CompileOptions(regional=True), cache=cache)
    # one package per (class, parameter shapes): the 8- and 16-channel blocks don't share one
    assert len({artifact.key for _, artifact in regional.parts}) == len(regional.parts) >= 2
    inputs = tiny.unet_inputs()
    with torch.no_grad():
        eager = model(**inputs)[0]
    aoti.apply(regional, model)
    with torch.no_grad():
        out_regional = model(**inputs)[0]
    torch.testing.assert_close(out_regional, eager, rtol=1e-4, atol=1e-5)
    aoti.restore(model)


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(self.proj(x)) + x


class _Stack(torch.nn.Module):
    """Blocks of one class whose inputs differ in layout: the second sees a transposed copy's view."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(_Block() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks[0](x)
        x = self.blocks[1](x.transpose(1, 2).contiguous().transpose(1, 2))
        return self.blocks[2](x)


def test_regional_blocks_fed_other_layouts_than_the_first_match_eager(cache):
    torch.manual_seed(0)
    model = _Stack().eval()
    with aoti.capture(model) as call, torch.no_grad():
        model(torch.randn(2, 6, 8))
    artifact = aoti.compile(model, call, aoti.CompileOptions(regional=True), cache=cache)
    assert len(artifact.parts) == 1  # one package, built for the first block's (contiguous) input
    x = torch.randn(2, 6, 8)
    with torch.no_grad():
        eager = model(x)
        status = aoti.apply(artifact, model)
        compiled = model(x)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    assert status.compiled_calls == 3 and status.layout_copies == 1
    aoti.restore(model)


class _NumpyInForward(torch.nn.Module):
    """Whole-module export fails on the model's own code (a value read through `.numpy()`); its
    repeated blocks export fine."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(_Block() for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = float(x.detach().cpu().numpy().std()) + 1.0
        for block in self.blocks:
            x = block(x / scale)
        return x


def test_a_module_export_cannot_trace_is_compiled_block_by_block_with_the_reason(cache):
    torch.manual_seed(0)
    model = _NumpyInForward().eval()
    with aoti.capture(model) as call, torch.no_grad():
        model(torch.randn(2, 6, 8))
    artifact = aoti.compile(model, call, cache=cache)  # whole module asked for
    assert isinstance(artifact, aoti.RegionalArtifact)
    assert artifact.status.fallbacks[0].startswith("whole module -> regional: export failed")
    x = torch.randn(2, 6, 8)
    with torch.no_grad():
        eager = model(x)
        status = aoti.apply(artifact, model)
        compiled = model(x)
    assert status.runtime == "aoti" and status.compiled_calls == 2
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    aoti.restore(model)


def test_a_regional_artifact_loads_by_ref_onto_a_fresh_copy(cache):
    """Another process binds a regional artifact from plain data: every block, not only the first of
    each group, is rewritten as its package was built, then bound."""
    model = tiny.flux(num_layers=2, num_single_layers=2)
    with aoti.capture(model) as call, torch.no_grad():
        model(**tiny.flux_inputs())
    ref = aoti.compile(model, call, aoti.CompileOptions(regional=True), cache=cache).ref()
    fresh = tiny.flux(num_layers=2, num_single_layers=2)
    loaded = aoti.load(fresh, ref, cache=cache)
    assert isinstance(loaded, aoti.RegionalArtifact) and loaded.ref() == ref
    status = aoti.apply(loaded, fresh)
    inputs = tiny.flux_inputs()
    with torch.no_grad():
        compiled = fresh(**inputs)[0]
    assert status.runtime == "aoti" and status.compiled_calls == 4
    aoti.restore(fresh)
    with torch.no_grad():
        torch.testing.assert_close(compiled, fresh(**inputs)[0], rtol=1e-4, atol=1e-5)


class _Blocks(torch.nn.Module):
    """Two blocks of one width that run, one of another width that this input never reaches."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 16)])

    def forward(self, x: torch.Tensor, wide: bool = False) -> torch.Tensor:
        x = self.blocks[1](self.blocks[0](x))
        return self.blocks[2](x) if wide else x


def test_blocks_that_never_ran_are_a_recorded_fallback(cache):
    model = _Blocks()
    with aoti.capture(model) as call, torch.no_grad():
        model(torch.randn(2, 8))
    artifact = aoti.compile(model, call, aoti.CompileOptions(regional=True), cache=cache)
    assert [names for names, _ in artifact.parts] == [["blocks.0", "blocks.1"]]
    assert "regional: 1 block(s) like blocks.2 never ran on the captured calls; they stay eager" in artifact.status.fallbacks
    status = aoti.apply(artifact, model)
    assert any("never ran" in f for f in status.fallbacks)


def test_cuda_graphs_asked_of_a_regional_build_on_the_cpu_are_a_recorded_fallback(cache):
    """CUDA graphs of a regional step need a GPU: asking for them on the CPU is said, not dropped silently."""
    model = _Blocks()
    with aoti.capture(model) as call, torch.no_grad():
        model(torch.randn(2, 8))
    artifact = aoti.compile(model, call, aoti.CompileOptions(regional=True), cache=cache)
    assert not any("cuda graphs" in f for f in aoti.apply(artifact, model).fallbacks)
    status = aoti.apply(artifact, model, cuda_graphs=True)
    assert status.runtime == "aoti" and "cuda graphs -> off: the graphs run on cpu" in status.fallbacks
    assert "forward" not in model.__dict__  # no step graph: the blocks' graphs run one by one
