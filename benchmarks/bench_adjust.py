#!/usr/bin/env python
"""Cost of one adjustment step relative to its floor, measured in one run.

The floor is one plain forward+backward of the same two batches (source and target sentences,
stacked) with a mean-squared loss on the raw hidden states: what any loss on these tokens costs.
The adjustment step adds word pooling, the link gather and the frozen f0 forward of the English
side (no gradient). Run: python benchmarks/bench_adjust.py [--device cuda] [--amp auto|no|bf16]
(auto, the default: bf16 on a GPU with bf16 or a CPU with AMX / AVX512-BF16, else fp32)
"""
import argparse
import copy
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

from hf_xladjust.alignment.loss import AlignmentLoss
from hf_xladjust.alignment.pairs import AlignedPairCollator
from hf_xladjust.precision import cpu_bf16_support, resolve_amp


def synthetic_features(n_pairs, words, rng, vocab_size):
    """Features in AlignedPairDataset's format: words of 1-3 subwords, [CLS] ... [SEP], ~all words linked."""
    feats = []
    for _ in range(n_pairs):
        feat = {}
        for side in ("src", "tgt"):
            n_words = int(rng.integers(words - 5, words + 6))
            pieces = rng.integers(1, 4, size=n_words)
            slot = np.concatenate([[n_words], np.repeat(np.arange(n_words), pieces), [n_words + 1]])
            feat[f"{side}_input_ids"] = rng.integers(5, vocab_size, size=len(slot)).tolist()
            feat[f"{side}_token_slot"] = slot
            feat[f"{side}_num_slots"] = n_words + 2
        n_links = min(feat["src_num_slots"], feat["tgt_num_slots"]) - 2
        feat["links"] = np.stack([rng.permutation(n_links), rng.permutation(n_links)], axis=1)
        feats.append(feat)
    return feats


def timed(fn, device, repeats):
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=30000)
    parser.add_argument("--batch", type=int, default=32, help="sentence pairs per step")
    parser.add_argument("--words", type=int, default=30, help="mean words per sentence")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["auto", "no", "fp16", "bf16"], default="auto",
                        help="auto: bf16 on a GPU with bf16 or a CPU with AMX / AVX512-BF16, else fp32")
    args = parser.parse_args()

    device = torch.device(args.device)
    args.amp = resolve_amp(args.amp, device.type) or "no"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden)
    model = BertModel(config).to(device).train()
    f0 = copy.deepcopy(model)
    loss_fn = AlignmentLoss(f0)
    batch = AlignedPairCollator(0)(synthetic_features(args.batch, args.words, np.random.default_rng(0), args.vocab))
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.amp)
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)  # noqa: E731

    length = max(batch["src_input_ids"].shape[1], batch["tgt_input_ids"].shape[1])
    pad = lambda x: F.pad(x, (0, length - x.shape[1]))  # noqa: E731
    ids = torch.cat([pad(batch["src_input_ids"]), pad(batch["tgt_input_ids"])])
    mask = torch.cat([pad(batch["src_attention_mask"]), pad(batch["tgt_attention_mask"])])
    n = args.batch

    def floor_step():
        model.zero_grad(set_to_none=True)
        with autocast():
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
        F.mse_loss(h[:n].float(), h[n:].float()).backward()

    def adjust_step():
        model.zero_grad(set_to_none=True)
        with autocast():
            out = loss_fn(model, batch)
        out["loss"].backward()

    for fn in (floor_step, adjust_step):  # warm-up
        fn(), fn()
    floor = timed(floor_step, device, args.repeats)
    adjust = timed(adjust_step, device, args.repeats)
    tokens = int(batch["src_attention_mask"].sum() + batch["tgt_attention_mask"].sum())
    print(f"device={device} amp={args.amp} (CPU bf16: {cpu_bf16_support() or 'none'}) "
          f"threads={torch.get_num_threads()} config={args.layers}x{args.hidden} "
          f"batch={args.batch} pairs, {tokens} real tokens, padded length {length}, "
          f"{len(batch['src_link_slots'])} links")
    print(f"floor (fwd+bwd, MSE on hidden states): {floor * 1000:.1f} ms")
    print(f"adjustment step (Eq. 1, pooling, f0):  {adjust * 1000:.1f} ms")
    print(f"sentence pairs per second: {args.batch / adjust:.1f}")
    print(f"ratio adjustment / floor: {adjust / floor:.3f}")


if __name__ == "__main__":
    main()
