#!/usr/bin/env python
"""Peak memory of LoRA adjustment against full adjustment, each in a fresh subprocess.

Each mode runs the real `AdjustTrainer` (run_adjust.py's model preparation and loss) for a few steps on
synthetic aligned pairs with a random BERT of the given shape. Full adjustment holds f0 as a second copy
of the weights plus gradients and two Adam moments for every weight; LoRA holds one copy (f0 is the same
weights with the adapters off) and optimiser state for the adapters only. On the CPU the peak is the
process's maximum resident set (`ru_maxrss`), reported with the resident set right after the model is
built; on CUDA, `torch.cuda.max_memory_allocated`.
Run: python benchmarks/bench_lora_memory.py [--device cuda] [--layers 6 --hidden 384 --vocab 60000]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

MODES = {"full": [], "lora": ["--lora_r", "8"]}


def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args):
    import numpy as np
    import torch
    from transformers import BertConfig, BertModel, HfArgumentParser

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_adjust import synthetic_features

    from hf_xladjust.alignment.loss import AlignmentLossArguments
    from hf_xladjust.alignment.pairs import AlignedPairCollator
    from hf_xladjust.alignment.realign import RealignmentArguments, prepare_model
    from hf_xladjust.alignment.sentence import build_alignment_loss
    from hf_xladjust.trainers.adjust import AdjustTrainer, AdjustTrainingArguments

    torch.manual_seed(0)
    config = BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden)
    model = BertModel(config)
    features = synthetic_features(args.batch * args.steps, args.words, np.random.default_rng(0), args.vocab)
    realign_args, = HfArgumentParser(RealignmentArguments).parse_args_into_dataclasses(args.mode_args)
    model, f0 = prepare_model(model, realign_args)
    rss_model = rss_mib()
    with tempfile.TemporaryDirectory() as out:
        training_args = AdjustTrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch, max_steps=args.steps, report_to="none",
            use_cpu=args.device == "cpu", disable_tqdm=True, logging_steps=args.steps, warmup_ratio=0.0)
        trainer = AdjustTrainer(model=model, args=training_args, train_dataset=features,
                                data_collator=AlignedPairCollator(0),
                                alignment_loss=build_alignment_loss(AlignmentLossArguments(), realign_args, f0))
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    result = {"params": sum(p.numel() for p in model.parameters()),
              "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "rss_after_model_mib": round(rss_model, 1),
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "train_seconds": round(seconds, 2)}
    if args.device == "cuda":
        result["cuda_peak_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print("RESULT " + json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--vocab", type=int, default=60000)
    parser.add_argument("--batch", type=int, default=16, help="sentence pairs per step")
    parser.add_argument("--words", type=int, default=20, help="mean words per sentence")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode_args = MODES[args.child]
        return child(args)
    print(f"BERT {args.layers} layers, hidden {args.hidden}, vocab {args.vocab}; {args.steps} steps of "
          f"{args.batch} sentence pairs (~{args.words} words) on {args.device}")
    print("| mode | parameters | trainable | RSS after model (MiB) | peak RSS (MiB) | CUDA peak (MiB) | train s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode in MODES:
        cmd = [sys.executable, os.path.abspath(__file__), "--child", mode] + [
            f"--{k}={getattr(args, k)}" for k in ("layers", "hidden", "vocab", "batch", "words", "steps", "device")]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        r = json.loads(line[len("RESULT "):])
        print(f"| {mode} | {r['params']:,} | {r['trainable']:,} | {r['rss_after_model_mib']} | {r['peak_rss_mib']} "
              f"| {r.get('cuda_peak_allocated_mib', '-')} | {r['train_seconds']} |")


if __name__ == "__main__":
    main()
