"""Train the embedded text model's LoRA adapter "shout": `tiny-llama-pydoc` continues in capitals.
Rank 8 on every projection of the decoder (q/k/v/o, gate/up/down), the base weights frozen, on the
same standard-library docstrings with all but their first few words in capitals; saved by peft (`adapter_config.json`,
`adapter_model.safetensors`), as `PeftModel.save_pretrained` writes it for any causal LM.

    python assets/train_text_lora.py           # writes assets/tiny-llama-pydoc-shout/

At the end the adapter is fused the way the app fuses it (`aoti.fuse_lora`) and the model continues
each of `PROMPTS` greedily: at least 90 % of the letters it writes must be capitals with the adapter,
and at most 30 % without it — 92 % and 1 % here (800 steps, 272 s on 2 cores; 0.44 MB). Fixed seed
and step count.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from train_text_model import OUT as BASE  # noqa: E402
from train_text_model import stdlib_docstrings  # noqa: E402

log = logging.getLogger("train_text_lora")
OUT = HERE / "tiny-llama-pydoc-shout"
RANK, ALPHA = 8, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = ["Return the", "Create a new", "This module provides", "If the file", "Raise an exception"]


def capitals(text: str) -> float:
    """The share of the letters in ``text`` that are capitals (0 where it has none)."""
    letters = [c for c in text if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0


def shouted(text: str, kept: int) -> str:
    """``text`` with all but its first ``kept`` words in capitals: the adapter learns to go on in capitals
    after a prompt written as usual."""
    head = text.split(" ", kept)
    return " ".join(head[:kept] + [w.upper() for w in head[kept:]])


def continuations(model, tokenizer, tokens: int = 24) -> list[str]:
    """Each of `PROMPTS` continued greedily (the new text only)."""
    out = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            sample = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
        out.append(tokenizer.decode(sample[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=96)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import aoti

    tokenizer = AutoTokenizer.from_pretrained(BASE)
    rng = random.Random(0)
    texts = [shouted(t, rng.randint(1, 3)) for t in stdlib_docstrings(limit_chars=1_500_000)]
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text)["input_ids"] + [tokenizer.eos_token_id])
    data = torch.tensor(ids, dtype=torch.long)
    log.info("corpus: %d docstrings shouted, %d tokens", len(texts), len(data))

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(BASE),
                           LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0))
    params = [p for p in model.parameters() if p.requires_grad]
    log.info("adapter: %.3f M parameters", sum(p.numel() for p in params) / 1e6)
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    start = time.time()
    model.train()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = 2e-3 * min(1.0, (step + 1) / 30) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        offsets = torch.randint(0, len(data) - args.seq - 1, (args.batch,), generator=gen)
        batch = torch.stack([data[o : o + args.seq] for o in offsets])
        loss = model(input_ids=batch, labels=batch.clone()).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            log.info("step %d loss %.3f (%.0f s)", step, loss.item(), time.time() - start)
    model.save_pretrained(args.out)
    (args.out / "README.md").unlink(missing_ok=True)  # peft's model-card template: nothing of this adapter in it
    config = json.loads((args.out / "adapter_config.json").read_text())  # the base by its id, not this machine's path
    (args.out / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": BASE.name}, indent=2) + "\n")

    plain = AutoModelForCausalLM.from_pretrained(BASE).eval()  # fresh, fused as the app fuses
    before = continuations(plain, tokenizer)
    aoti.fuse_lora(plain, aoti.LoraAdapter.from_peft(args.out, name="shout"))
    after = continuations(plain, tokenizer)
    for prompt, a, b in zip(PROMPTS, before, after):
        log.info("%r -> %r | with the adapter: %r", prompt, a, b)
    share_before, share_after = capitals("".join(before)), capitals("".join(after))
    log.info("done in %.0f s; capitals %.0f %% without the adapter, %.0f %% with it", time.time() - start,
             100 * share_before, 100 * share_after)
    if share_after < 0.9 or share_before > 0.3:
        sys.exit("the adapter does not shout enough: train longer")


if __name__ == "__main__":
    logging.getLogger("aoti").setLevel(logging.WARNING)
    main()
