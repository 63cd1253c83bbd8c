"""Device discovery from recorded outputs, and selection decisions for a table of (model, device) cases."""

import pytest
import torch

import aoti
from engines import device as dev
from engines import registry
from engines.device import DeviceInfo
from engines.select import choose, estimate_bytes, estimate_parts

GiB = 1024**3

NVIDIA_SMI_L_MIG = """\
GPU 0: NVIDIA H200 (UUID: GPU-5d2c0a9e-1111-2222-3333-444455556666)
  MIG 3g.71gb     Device  0: (UUID: MIG-aaaaaaaa-1111-2222-3333-444455556666)
  MIG 3g.71gb     Device  1: (UUID: MIG-bbbbbbbb-1111-2222-3333-444455556666)
GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-77777777-1111-2222-3333-444455556666)
"""


def test_parse_mig_names():
    assert dev.parse_mig_profile("NVIDIA H200 MIG 3g.71gb") == (3, 71)
    assert dev.parse_mig_profile("NVIDIA A100-SXM4-80GB MIG 1g.10gb") == (1, 10)
    assert dev.parse_mig_profile("NVIDIA H100 80GB HBM3") is None


def test_parse_nvidia_smi_list_with_mig_slices():
    devices = dev.parse_nvidia_smi_list(NVIDIA_SMI_L_MIG)
    assert [d["name"] for d in devices] == ["NVIDIA H200 MIG 3g.71gb", "NVIDIA H200 MIG 3g.71gb", "NVIDIA H100 80GB HBM3"]
    assert devices[0]["mig"] == "3g.71gb" and devices[0]["parent"].startswith("GPU-5d2c")


def test_memory_cap_emulates_a_slice(monkeypatch):
    monkeypatch.setenv(dev.ENV_MEMORY_CAP_GB, "3")
    info = dev.discover()
    assert info.budget_bytes == 3 * GiB and info.kind == "cpu"
    monkeypatch.setenv(dev.ENV_MEMORY_CAP_GB, "lots")
    with pytest.raises(ValueError, match="number of GiB"):
        dev.discover()


def _gpu(name: str, gib: float, capability=(9, 0), count: int = 1) -> DeviceInfo:
    mig = dev.parse_mig_profile(name)
    return DeviceInfo("mig" if mig else "cuda", name, int(gib * GiB), int(gib * GiB), int(gib * GiB), capability, count)


CPU_24 = DeviceInfo("cpu", "CPU", 24 * GiB, 20 * GiB, 24 * GiB)
H200_MIG = _gpu("NVIDIA H200 MIG 3g.71gb", 71)
H100_MIG_SMALL = _gpu("NVIDIA H100 80GB HBM3 MIG 1g.10gb", 10)
H100 = _gpu("NVIDIA H100 80GB HBM3", 80)
A10G = _gpu("NVIDIA A10G", 24, capability=(8, 6))
L4_X2 = _gpu("NVIDIA L4", 24, capability=(8, 9), count=2)
T4 = _gpu("Tesla T4", 16, capability=(7, 5))
T4_X2 = _gpu("Tesla T4", 16, capability=(7, 5), count=2)
A100_CAPPED_X2 = _gpu("NVIDIA A100-SXM4-80GB", 43, capability=(8, 0), count=2)  # AOTI_MEMORY_CAP_GB=43, no FP8


@pytest.mark.parametrize(
    ("model", "device", "engine", "quant"),
    [
        ("tiny-llama-pydoc", CPU_24, "lightweight", "none"),
        ("tiny-shapes-unet", CPU_24, "lightweight", "none"),
        ("qwen2.5-0.5b-instruct", CPU_24, "lightweight", "none"),
        ("qwen2.5-7b-instruct", CPU_24, "refused", "none"),  # 30 GB of fp32 weights
        ("qwen2.5-7b-instruct", H200_MIG, "lightweight", "none"),
        ("qwen2.5-7b-instruct", H100_MIG_SMALL, "lightweight", "fp8_rowwise"),  # fits with FP8 weights only
        ("llama-3.1-8b-instruct", A10G, "lightweight", "none"),
        ("llama-3.1-8b-instruct", T4, "refused", "none"),  # no FP8 on capability 7.5, one GPU
        ("llama-3.1-8b-instruct", T4_X2, "distributed", "none"),
        ("flux.1-dev", H200_MIG, "lightweight", "none"),
        ("flux.1-dev", H100, "lightweight", "none"),
        ("flux.1-dev", L4_X2, "lightweight", "fp8_rowwise"),  # FP8 and the text encoders in host memory: 21 GiB
        ("flux.1-dev", A100_CAPPED_X2, "distributed", "none"),  # context parallel: activations split
        ("flux.1-dev", A10G, "refused", "none"),
    ],
)
def test_selection_table(model, device, engine, quant):
    decision = choose(registry.get(model), device)
    assert decision.engine == engine, decision.reason
    assert decision.quantization == quant
    if engine == "refused":
        assert "GiB" in decision.reason and "does not fit" in decision.reason


def test_image_models_across_gpus_name_the_parallelism_or_why_not():
    assert "context parallel over 2" in choose(registry.get("flux.1-dev"), A100_CAPPED_X2).reason
    one = choose(registry.get("flux.1-dev"), A100_CAPPED_X2.__class__(**{**A100_CAPPED_X2.__dict__, "count": 1}))
    assert one.engine == "lightweight" and one.offload_encoders and one.quantization == "none"  # no FP8 on an A100
    refused = choose(registry.get("flux.1-dev"), T4_X2)
    assert refused.engine == "refused" and "not the 3" in refused.reason and "even with its text encoders in host memory" in refused.reason


@pytest.mark.parametrize(("cap_gb", "fp8", "offload"), [(70, False, False), (48, False, False), (24, True, True), (16, None, None)])
def test_flux_dev_placement_under_a_memory_cap(monkeypatch, cap_gb, fp8, offload):
    """FLUX.1-dev (12 B transformer, 4.9 B of text encoders) on an H200 capped as a MIG slice or a
    ZeroGPU size: all of it on the device at 70 and 48 GB; at 24 GB FP8 weights and the text encoders
    in host memory; at 16 GB a refusal with the smallest footprint tried."""
    _zerogpu_card(monkeypatch, "NVIDIA H200")
    monkeypatch.setenv(dev.ENV_MEMORY_CAP_GB, str(cap_gb))
    info = dev.discover(apply_cap=False)
    assert info.budget_bytes == min(cap_gb * GiB, info.total_bytes)  # spaces' H200 stand-in is 69.5 GiB
    decision = choose(registry.get("flux.1-dev"), info)
    if fp8 is None:
        assert decision.engine == "refused"
        assert "does not fit: needs about 44.6 GiB" in decision.reason
        assert "about 21.2 GiB even with FP8 weights and its text encoders in host memory" in decision.reason
        return
    assert decision.engine == "lightweight" and decision.need_bytes <= info.budget_bytes
    assert (decision.quantization == "fp8_rowwise", decision.offload_encoders) == (fp8, offload)
    if offload:
        assert "text encoders (9.1 GiB) in host memory" in decision.reason


def test_a_draft_is_counted_and_left_out_where_the_model_fits_only_alone():
    """Qwen2.5-7B with its Qwen2.5-0.5B draft: FP8 with the draft at 16 GiB; at 10 GiB only the model
    fits (FP8, no draft: speculative decoding off, said); at 8 GiB a refusal naming the smallest try."""
    qwen = registry.get("qwen2.5-7b-instruct")
    assert estimate_bytes(qwen, H100) > estimate_bytes(qwen, H100, draft=False)
    assert choose(qwen, _gpu("NVIDIA H100 80GB HBM3", 16)).draft
    alone = choose(qwen, H100_MIG_SMALL)
    assert (alone.engine, alone.quantization, alone.draft) == ("lightweight", "fp8_rowwise", False)
    assert "without its draft qwen2.5-0.5b-instruct (speculative decoding off)" in alone.reason
    refused = choose(qwen, _gpu("NVIDIA H100 80GB HBM3", 8))
    assert refused.engine == "refused" and "even with FP8 weights and without its draft" in refused.reason


def test_fp8_quantizes_the_denoiser_and_leaves_the_text_encoders_in_their_dtype():
    flux = registry.get("flux.1-dev")
    weights = {q: estimate_parts(flux, H100, q)[0] for q in ("none", "fp8_rowwise")}
    assert weights["none"] - weights["fp8_rowwise"] == pytest.approx((flux.params_b - flux.encoders_b) * 1e9)
    assert estimate_parts(flux, H100, offload_encoders=True)[0] == pytest.approx(weights["none"] - flux.encoders_b * 2e9)


def test_fp8_weights_are_only_chosen_for_models_that_offer_them():
    tiny_budget = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", 80 * GiB, 80 * GiB, int(0.003 * GiB), (9, 0), count=2)
    decision = choose(registry.get("tiny-llama-pydoc"), tiny_budget)  # fp8=False in the registry
    assert decision.engine == "distributed" and decision.quantization == "none"


def test_estimate_grows_with_dtype_and_shrinks_with_fp8():
    spec = registry.get("qwen2.5-7b-instruct")
    assert estimate_bytes(spec, CPU_24) > estimate_bytes(spec, H100) > estimate_bytes(spec, H100, "fp8_rowwise")


def test_unknown_model_names_the_known_ones():
    with pytest.raises(KeyError, match="known models: tiny-llama-pydoc"):
        registry.get("gpt-17")


def test_hub_models_are_unavailable_offline_with_the_reason(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    available, why = registry.availability(registry.get("flux.1-dev"))
    assert not available and "unreachable" in why
    assert "could not be read" not in why  # a plain cache miss is not an error


def test_a_cache_that_cannot_be_read_is_said_not_called_a_miss(monkeypatch):
    import huggingface_hub

    def unreadable(*args, **kwargs):
        raise PermissionError("[Errno 13] Permission denied: '/data/hf/hub'")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreadable)
    available, why = registry.availability(registry.get("flux.1-dev"))
    assert not available and "could not be read (PermissionError" in why and "Permission denied" in why


def test_cuda_discovery_is_not_claimed_without_a_gpu():
    assert (dev.discover().kind == "cpu") == (not torch.cuda.is_available())


def test_bad_image_request_for_the_multi_gpu_engine_is_refused_before_any_worker_starts(cache):
    from engines import Studio
    from engines.image import ImageParams

    two_small_gpus = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", 80 * GiB, 80 * GiB, int(0.0065 * GiB), (8, 6), count=2)
    studio = Studio(device=two_small_gpus, cache=cache)
    assert choose(registry.get("tiny-shapes-unet"), two_small_gpus).engine == "distributed"
    with pytest.raises(ValueError, match="size 64x64 is not offered for tiny-shapes-unet"):
        studio.generate_image("tiny-shapes-unet", "a red circle", ImageParams(64, 64, steps=4))
    with pytest.raises(ValueError, match="`prompt` is empty"):
        studio.generate_image("tiny-shapes-unet", " ", ImageParams(32, 32, steps=4))
    assert studio.distributed == {}  # no worker was started for a request that could not run


def test_llm_graphs_get_the_decode_preset_and_kernels_on_gpus_only():
    from engines.recipes import Switches, recipe_for

    text, image = registry.get("tiny-llama-pydoc"), registry.get("tiny-shapes-unet")
    gpu, cpu = recipe_for(text, H100, Switches()), recipe_for(text, CPU_24, Switches())
    assert gpu.options.preset == "decode" and any(isinstance(t, aoti.OneRowKernels) for t in gpu.transforms)
    assert cpu.options.preset == "default" and not any(isinstance(t, aoti.OneRowKernels) for t in cpu.transforms)  # CPU builds stay short
    assert recipe_for(image, H100, Switches()).options.preset == "default"


def test_flux_gets_fp8_attention_with_fp8_weights_on_a_gpu_only():
    from engines.recipes import Switches, recipe_for

    flux, dit = registry.get("flux.1-dev"), registry.get("tiny-shapes-dit")
    assert recipe_for(flux, H100, Switches(fp8=True, regional=True)).options.attention == "fp8"
    assert recipe_for(dit, H100, Switches(regional=True)).options.attention == "auto"  # bf16 weights: bf16 attention
    assert recipe_for(dit, CPU_24, Switches(regional=True)).options.attention == "auto"


def _zerogpu_card(monkeypatch, model: str) -> dict:
    """torch.cuda as ZeroGPU's main process sees it: spaces' stand-in values for ``model`` (from the
    installed spaces package's own configs.json), as its patched torch answers them."""
    import json
    from importlib.resources import files

    card = next(c for c in json.loads(files("spaces.zero").joinpath("configs.json").read_text()) if c["model"] == model)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (card["memory"] - 309002240, card["memory"]))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: card["model"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (card["sm_major"], card["sm_minor"]))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    return card


def test_zerogpu_blackwell_card_discovered_and_served(monkeypatch):
    """ZeroGPU since May 2026: an RTX Pro 6000 Blackwell (sm_120). FP8 runs there, packages are keyed
    by its generation, and a model that needs more than half the card asks for a whole one."""
    from engines.recipes import Switches, fp8_refusal, recipe_for
    from engines.workers import gpu_size

    _zerogpu_card(monkeypatch, "NVIDIA RTX PRO 6000 Blackwell Server Edition")
    info = dev.discover()
    assert info.kind == "cuda" and info.arch == "sm_120" and info.fp8 and "sm_120" in info.label
    flux = registry.get("flux.1-dev")
    assert fp8_refusal(flux, info) == "" and recipe_for(registry.get("qwen2.5-7b-instruct"), info, Switches()).options.preset == "decode"
    assert choose(flux, info).engine == "lightweight"
    assert gpu_size(estimate_bytes(flux, info)) == "xlarge"
    assert gpu_size(estimate_bytes(registry.get("qwen2.5-7b-instruct"), info)) == "large"


def test_zerogpu_h200_card_discovered(monkeypatch):
    _zerogpu_card(monkeypatch, "NVIDIA H200")
    info = dev.discover()
    assert info.arch == "sm_90" and info.fp8 and info.budget_bytes == 74625056768


def test_startup_models_from_the_environment_value():
    assert registry.startup_models(None) == registry.startup_models(" ") == ["tiny-llama-pydoc", "tiny-shapes-unet"]
    assert registry.startup_models("qwen2.5-7b-instruct, tiny-shapes-unet") == ["qwen2.5-7b-instruct", "tiny-shapes-unet"]
    with pytest.raises(ValueError, match="unknown model 'gpt-9'"):
        registry.startup_models("gpt-9")
    with pytest.raises(ValueError, match="at most one text and one image model"):
        registry.startup_models("tiny-llama-pydoc,qwen2.5-7b-instruct")
