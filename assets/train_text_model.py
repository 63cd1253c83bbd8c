"""Train the embedded default text model: a tiny Llama-architecture causal LM on the docstrings of
the Python standard library (on every machine, no download), with a byte-level BPE tokenizer.

    python assets/train_text_model.py            # writes assets/tiny-llama-pydoc/
    python assets/train_text_model.py --draft    # writes assets/tiny-llama-pydoc-draft/: its speculative
                                                 # decoding draft, a quarter as deep and half as wide, same tokenizer

Fixed seed and step count: the same machine gives the same weights.
"""

from __future__ import annotations

import argparse
import ast
import logging
import math
import random
import sys
import sysconfig
import time
from pathlib import Path

import torch

log = logging.getLogger("train_text")
OUT = Path(__file__).resolve().parent / "tiny-llama-pydoc"
DRAFT_OUT = Path(__file__).resolve().parent / "tiny-llama-pydoc-draft"


def stdlib_docstrings(limit_chars: int) -> list[str]:
    """Module, class and function docstrings of the standard library, in a fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        if any(part in {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo"} for part in path.parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 80 and doc.count(">>>") == 0:
                    text = " ".join(doc.split())
                    texts.append(text)
                    total += len(text)
        if total >= limit_chars:
            break
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--draft", action="store_true", help="train the draft model, with the target's tokenizer")
    args = parser.parse_args()
    args.out = args.out or (DRAFT_OUT if args.draft else OUT)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from transformers import LlamaConfig, LlamaForCausalLM

    texts = stdlib_docstrings(limit_chars=6_000_000)
    log.info("corpus: %d docstrings, %.1f MB", len(texts), sum(map(len, texts)) / 1e6)
    if args.draft:  # the draft must speak the target's tokens
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(OUT)
    else:
        tokenizer = train_tokenizer(texts, vocab_size=2048)
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text)["input_ids"] + [eos])
    data = torch.tensor(ids, dtype=torch.long)
    log.info("tokens: %d", len(data))

    width, ffn, layers, heads, kv_heads = (96, 256, 1, 3, 1) if args.draft else (192, 512, 4, 6, 2)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, rope_theta=10000.0,
    )
    model = LlamaForCausalLM(config)
    log.info("parameters: %.2f M", sum(p.numel() for p in model.parameters()) / 1e6)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)
    start = time.time()
    for step in range(args.steps):
        lr = 3e-3 * min(1.0, (step + 1) / 100) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        offsets = torch.randint(0, len(data) - args.seq - 1, (args.batch,), generator=gen)
        batch = torch.stack([data[o : o + args.seq + 1] for o in offsets])
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone()).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            log.info("step %d loss %.3f (%.0f s)", step, loss.item(), time.time() - start)
    model.eval()
    model.generation_config.do_sample = False
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out, safe_serialization=True)
    tokenizer.save_pretrained(args.out)
    prompt = tokenizer("Return the", return_tensors="pt")
    sample = model.generate(**prompt, max_new_tokens=30, do_sample=False)
    log.info("sample: %s", tokenizer.decode(sample[0]))
    log.info("done in %.0f s", time.time() - start)


if __name__ == "__main__":
    sys.exit(main())
