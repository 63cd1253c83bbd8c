"""The `attention` option pins the fused SDPA kernel the compiled graph calls."""

import pytest
import torch

import aoti


class SelfAttention(torch.nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.qkv, self.heads = torch.nn.Linear(dim, 3 * dim), heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)


def test_pinned_backend_changes_the_lowered_kernel_and_matches_eager(cache):
    model = SelfAttention().eval()
    with aoti.capture(model) as call, torch.no_grad():
        model(torch.randn(1, 16, 32))
    auto = aoti.compile(model, call, aoti.CompileOptions(attention="auto"), cache=cache)
    math = aoti.compile(model, call, aoti.CompileOptions(attention="math"), cache=cache)
    assert auto.key != math.key
    assert "flash_attention" in auto.wrapper_source()  # PyTorch's own choice on the CPU
    assert "flash_attention" not in math.wrapper_source()  # decomposed into matmul + softmax
    x = torch.randn(1, 16, 32)
    expected = model(x)
    aoti.apply(math, model)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5, rtol=1e-4)
    assert aoti.status_of(model).compiled_calls == 1


def test_cuda_only_backend_on_cpu_falls_back_visibly(cache, mlp_artifact):
    model, reference = mlp_artifact
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    artifact = aoti.compile(model, call, aoti.CompileOptions(attention="cudnn"), cache=cache)
    assert artifact.key == reference.key  # recorded as "auto": the same graph, a cache hit
    assert artifact.status.fallbacks == ["cudnn attention -> auto: cudnn attention needs a CUDA GPU; this device is the CPU"]


def test_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="cudnn"):
        aoti.CompileOptions(attention="fa9")


def test_fp8_attention_tiles_shrink_to_a_blackwell_cards_shared_memory():
    from aoti.kernels.fp8_attention import DEFAULT_CONFIG, fit_config, shared_bytes

    assert fit_config(227 * 1024) == (DEFAULT_CONFIG, None)  # H100/H200: the tuned tiles as they are
    blackwell, reason = fit_config(101376)  # RTX Pro 6000 Blackwell (sm_120), per block
    assert blackwell.num_stages < DEFAULT_CONFIG.num_stages and shared_bytes(blackwell, 128) <= 101376
    assert (blackwell.block_m, blackwell.block_n) == (DEFAULT_CONFIG.block_m, DEFAULT_CONFIG.block_n)
    assert reason == "H200-tuned tiles need 104 KiB of shared memory, this GPU has 99 KiB: 2 pipeline stages"
    assert fit_config(16 * 1024) == (None, "its tiles need 40 KiB of shared memory; this GPU has 16 KiB")


def test_fp8_attention_on_a_gpu_with_less_shared_memory_is_a_recorded_choice(monkeypatch):
    from aoti import attention
    from aoti.kernels import fp8 as quant
    from aoti.kernels import fp8_attention

    monkeypatch.setattr(fp8_attention, "available", lambda: True)
    monkeypatch.setattr(quant, "fp8_unsupported", lambda device: None)
    monkeypatch.setattr(fp8_attention, "config_for", lambda index, dim: fp8_attention.fit_config(101376, dim))
    decision = attention.decide("fp8", torch.device("cuda"))
    assert decision.applied == "fp8" and "2 pipeline stages" in decision.reason
    monkeypatch.setattr(fp8_attention, "config_for", lambda index, dim: fp8_attention.fit_config(16 * 1024, dim))
    decision = attention.decide("fp8", torch.device("cuda"))
    assert decision.applied == "auto" and "16 KiB" in decision.reason


def test_fp8_attention_is_pinned_for_the_tracing_thread_only(monkeypatch):
    """While a compile traces with `attention="fp8"`, a request for another model served eagerly in
    another thread keeps PyTorch's SDPA (it got the FP8 router, unasked, before); the tracing thread,
    strict (Dynamo) or not, goes through the router."""
    import threading

    from aoti import attention
    from aoti.kernels import fp8_attention

    routed: list[str] = []
    real = fp8_attention.sdpa

    def spy(*args, **kwargs):
        routed.append("traced" if torch.compiler.is_compiling() else threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(fp8_attention, "sdpa", spy)
    q = torch.randn(1, 2, 8, 16)
    expected = torch.nn.functional.scaled_dot_product_attention(q, q, q)
    other: list[torch.Tensor] = []
    with attention.pinned("fp8"):
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
        worker = threading.Thread(target=lambda: other.append(torch.nn.functional.scaled_dot_product_attention(q, q, q)),
                                  name="request")
        worker.start()
        worker.join()
        torch.export.export(SelfAttention().eval(), (torch.randn(1, 8, 32),), strict=True)  # Dynamo traces the router
    assert routed[0] == threading.main_thread().name and "request" not in routed and torch.equal(other[0], expected)
    assert torch.nn.functional.scaled_dot_product_attention is not None and "this_thread_only" not in repr(
        torch.nn.functional.scaled_dot_product_attention)  # put back
