#!/usr/bin/env python
"""Cost of sentence retrieval at every layer relative to its floor, measured in one run.

Measured: `SentenceRetrievalEvaluator` on 4 sets of 1,000 sentence pairs: one forward pass per
batch keeping every hidden state, mean pooling of all layers, cosine scores of all 1,000 candidates
for every query at every layer, ranks, metrics and the copy to the host. The floor is one plain
forward pass over the same sentences, in the same length-sorted batches, reading only the last
hidden state (no pooling, no scoring): what any use of the encoder on these sentences costs.
Tokenisation happens once, before timing, for both. Runs alternate and the medians are compared,
in wall time and in this process's CPU time (steadier on a shared machine; with --threads 1 it is
the work done).

Default model: a random BERT (--layers 4 --hidden 256, as the other benchmarks) with a WordPiece
tokenizer trained on the sentences; `--model_name_or_path` measures a real folder instead (e.g.
multilingual-e5-small from `python -m hf_xladjust.offline_model`). Sentences: LASER's Tatoeba
files with `--tatoeba_dir`, otherwise synthetic ones of Tatoeba's length (4-15 words).

    python benchmarks/bench_xsr.py [--tatoeba_dir ../shared/data/tatoeba] [--model_name_or_path M] \\
        [--device cuda] [--amp bf16]
"""
import argparse
import statistics
import time

import numpy as np
import torch

from hf_xladjust.evaluation.retrieval import SentenceRetrievalEvaluator, read_tatoeba
from hf_xladjust.precision import resolve_amp

LANGS = ("es", "ru", "vi", "hi")


def synthetic_sets(n_pairs, rng):
    """Four sets of random 'sentences' of 4-15 pseudo-words (syllable strings, so words split into subwords)."""
    syllables = [a + b for a in "bdfgklmnprstvz" for b in "aeiou"]

    def sentence():
        return " ".join("".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(rng.integers(4, 16)))
    return {lang: ([sentence() for _ in range(n_pairs)], [sentence() for _ in range(n_pairs)]) for lang in LANGS}


def random_bert(texts, layers, hidden, vocab):
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=False, strip_accents=False)
    wp.train_from_iterator(texts, vocab_size=vocab, min_frequency=1, show_progress=False)
    tokenizer = BertTokenizerFast(tokenizer_object=wp._tokenizer, model_max_length=512)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden)
    torch.manual_seed(0)
    return BertModel(config), tokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_name_or_path", default=None, help="a HF folder; default: a random BERT")
    parser.add_argument("--tatoeba_dir", default=None, help="LASER's files; default: synthetic sentences")
    parser.add_argument("--pairs", type=int, default=1000, help="sentence pairs per language (4 languages)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=["auto", "no", "fp16", "bf16"], default="auto",
                        help="auto: bf16 on a GPU with bf16 or a CPU with AMX / AVX512-BF16, else fp32")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    if args.tatoeba_dir:
        sets = {lang: (p.sources, p.targets) for lang in LANGS
                for p in [read_tatoeba(args.tatoeba_dir, lang).head(args.pairs)]}
    else:
        sets = synthetic_sets(args.pairs, np.random.default_rng(0))
    if args.model_name_or_path:
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(args.model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
        what = args.model_name_or_path
    else:
        model, tokenizer = random_bert([s for pair in sets.values() for side in pair for s in side],
                                       args.layers, args.hidden, args.vocab)
        what = f"random BERT {args.layers} layers x {args.hidden} hidden"
    model = model.to(device).eval()
    amp = resolve_amp(args.amp, torch.device(args.device).type)
    args.amp = amp or "no"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    evaluators = [SentenceRetrievalEvaluator(src, tgt, tokenizer, name=lang, batch_size=args.batch_size, amp=amp)
                  for lang, (src, tgt) in sets.items()]
    for ev in evaluators:  # tokenise before timing (cached per tokenizer)
        ev.tokenized(tokenizer, model)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def floor():
        for ev in evaluators:
            for _, ids, mask, _ in ev.batches(tokenizer, model, device):
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    model(input_ids=ids, attention_mask=mask).last_hidden_state
        sync()

    def retrieval():
        metrics = {}
        for ev in evaluators:
            metrics.update(ev(model))
        sync()
        return metrics

    def timed(fn):
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        return time.perf_counter() - start, time.process_time() - cpu, out

    floor(), retrieval()  # warm-up
    floors, evals, ratios, cpu_floors, cpu_evals = [], [], [], [], []
    for _ in range(args.repeats):
        f, cf, _ = timed(floor)
        e, ce, metrics = timed(retrieval)
        floors.append(f)
        evals.append(e)
        ratios.append(e / f)
        cpu_floors.append(cf)
        cpu_evals.append(ce)
    tokens = sum(int(ev.tokenized(tokenizer, model).lengths.sum()) for ev in evaluators)
    padded = sum(int(ids.numel()) for ev in evaluators for _, ids, _, _ in ev.batches(tokenizer, model, device))
    layers = metrics[f"{LANGS[0]}_layers"]
    print(f"device={device} amp={args.amp} threads={torch.get_num_threads()} model: {what} ({layers} hidden states)")
    print(f"sentences: {'Tatoeba ' + args.tatoeba_dir if args.tatoeba_dir else 'synthetic'}, {len(evaluators)} x "
          f"{args.pairs} pairs, {tokens} tokens ({padded} with padding), batch {args.batch_size}")
    print(f"floor (plain forward, last layer only): median {statistics.median(floors):.2f} s  "
          f"runs {[round(x, 2) for x in floors]}")
    print(f"retrieval (all layers, pool, score, rank): median {statistics.median(evals):.2f} s  "
          f"runs {[round(x, 2) for x in evals]}")
    print(f"sentences per second: {2 * len(evaluators) * args.pairs / statistics.median(evals):.0f}")
    print(f"ratio retrieval / floor: {statistics.median(evals) / statistics.median(floors):.3f} (medians); "
          f"per alternating pair {[round(r, 3) for r in ratios]}")
    print(f"CPU time: floor {statistics.median(cpu_floors):.2f} s, retrieval {statistics.median(cpu_evals):.2f} s, "
          f"ratio {statistics.median(cpu_evals) / statistics.median(cpu_floors):.3f} (medians)")
    print("best-layer MRR: " + ", ".join(f"{lang} {metrics[f'{lang}_mrr']:.3f} (L{metrics[f'{lang}_best_layer']})"
                                         for lang in LANGS))


if __name__ == "__main__":
    main()
