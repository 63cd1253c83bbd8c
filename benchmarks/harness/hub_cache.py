"""Hub models served with no network: random weights of a real configuration written into a local
Hugging Face cache laid out as the Hub leaves it (``hub/models--ORG--NAME/snapshots/<revision>/`` and
``refs/main``), so that the product finds them by their registry id with ``HF_HOME`` pointing there
and ``HF_HUB_OFFLINE=1``. The tokenizer is the embedded text model's (its ids are below every real
vocabulary here)."""

from __future__ import annotations

import time
from pathlib import Path

REVISION = "0" * 40
ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "assets" / "tiny-llama-pydoc"

QWEN_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=False,
               torch_dtype="bfloat16")


def snapshot_dir(hf_home: Path, repo: str) -> Path:
    """Where ``repo``'s files are in ``hf_home``'s Hub cache."""
    return hf_home / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / REVISION


def new_snapshot(hf_home: Path, repo: str) -> Path:
    """``repo``'s snapshot folder, made, with ``refs/main`` naming it."""
    snapshot = snapshot_dir(hf_home, repo)
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text(REVISION)
    return snapshot


def write_qwen_7b(hf_home: Path, device: str = "cuda") -> float:
    """Qwen2.5-7B-Instruct's geometry with random weights (initialized on ``device``: 7.6 B parameters
    take minutes on a CPU) in ``hf_home``. Returns the seconds it took."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    start = time.perf_counter()
    snapshot = new_snapshot(hf_home, "Qwen/Qwen2.5-7B-Instruct")
    with torch.device("meta"):
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN_7B)).to(torch.bfloat16)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(snapshot)
    AutoTokenizer.from_pretrained(TOKENIZER).save_pretrained(snapshot)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return time.perf_counter() - start
