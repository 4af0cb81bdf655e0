#!/usr/bin/env python
"""No host synchronisation in the training steps on a GPU: an adjustment step (AdjustTrainer) and a continual
NLI step (ContinualAlignTrainer), forward + backward + optimizer update, under
`torch.cuda.set_sync_debug_mode("error")`, where any device-to-host copy or synchronising call raises.

Random mBERT-base-size weights (12 x 768, 119,547-piece vocabulary; the GPU machine has no Hub) in bf16 autocast,
after warm-up steps outside the check (the first steps allocate and may sync). Each step kind is reported
separately, with the error that names the synchronising call if it fails.

    python benchmarks/gpu_sync_check.py [--output sync.json] [--layers 12 --hidden 768 --vocab 119547]
"""
import argparse
import copy
import json
import os
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_continual import SPECIALS, bert_config, word_tokenizer  # noqa: E402  (this folder is on sys.path)


def aligned_pool(n, words, vocab, rng):
    from hf_xladjust.alignment.pairs import AlignedPair

    n_words = vocab - len(SPECIALS)
    pool = []
    for _ in range(n):
        length = int(rng.integers(words - 5, words + 6))
        src = [f"w{i}" for i in rng.integers(0, n_words, length)]
        tgt = [f"w{i}" for i in rng.integers(0, n_words, length)]
        pool.append(AlignedPair(src, tgt, [(k, k) for k in range(length)]))
    return pool


def check(name, step, warmup, cuda=True):
    """Run `step` `warmup` times, then once under sync debug mode "error"; the outcome as a dict. Without
    `cuda` (the CPU dry run) the steps only run."""
    if not cuda:
        for _ in range(warmup + 1):
            step()
        print(f"{name}: ran on the CPU (dry run: nothing checked)", flush=True)
        return {"ok": True, "dry_run": True}
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        outcome = {"ok": True}
    except RuntimeError as err:
        frames = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_tb(err.__traceback__)
                  if "site-packages/torch/" not in f.filename][-6:]
        outcome = {"ok": False, "error": str(err).splitlines()[0], "where": frames}
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    print(f"{name}: {'no host sync' if outcome['ok'] else 'SYNC: ' + outcome['error']}", flush=True)
    for frame in outcome.get("where", []):
        print(f"    {frame}")
    return outcome


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=119547)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--output", default=None)
    parser.add_argument("--cpu_dry_run", action="store_true",
                        help="run the same steps on the CPU in fp32 without the check (to test this script)")
    args = parser.parse_args()
    cuda = not args.cpu_dry_run
    device = "cuda" if cuda else "cpu"
    if cuda and not torch.cuda.is_available():
        sys.exit("gpu_sync_check.py: no CUDA device (torch.cuda.is_available() is False; torch "
                 f"{torch.__version__}, CUDA build {torch.version.cuda})")
    from transformers import BertForSequenceClassification, BertModel, TrainingArguments
    from transformers.utils import logging as hf_logging

    from hf_xladjust.alignment.loss import AlignmentLoss
    from hf_xladjust.alignment.pairs import AlignedPairCollator, AlignedPairDataset
    from hf_xladjust.trainers.adjust import AdjustTrainer, AdjustTrainingArguments
    from hf_xladjust.trainers.continual import ContinualAlignTrainer

    hf_logging.set_verbosity_error()
    tmp = tempfile.mkdtemp(prefix="gpu_sync_check_")
    tok = word_tokenizer(args.vocab, tmp)
    config = bert_config(args)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    pool = AlignedPairDataset(aligned_pool(64, 30, args.vocab, rng), tok, max_length=512)
    results = {"device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)", "torch": torch.__version__,
               "cuda": torch.version.cuda, "model": f"{args.layers} x {args.hidden}, vocab {args.vocab}",
               "amp": "bf16" if cuda else "fp32"}
    precision = {"bf16": True} if cuda else {"use_cpu": True}

    # adjustment: AdjustTrainer's training_step (Eq. 1 with f0) + its optimizer, batch 32 pairs
    encoder = BertModel(config)
    adjust_args = AdjustTrainingArguments(output_dir=os.path.join(tmp, "adjust"), **precision, report_to=[],
                                          disable_tqdm=True, max_steps=100, per_device_train_batch_size=32)
    adjust = AdjustTrainer(model=encoder, args=adjust_args, train_dataset=pool,
                           data_collator=AlignedPairCollator(tok.pad_token_id),
                           alignment_loss=AlignmentLoss(copy.deepcopy(encoder)))
    adjust.create_optimizer_and_scheduler(num_training_steps=100)
    adjust.current_gradient_accumulation_steps = 1  # set by the training loop, which we bypass
    adjust_batch = AlignedPairCollator(tok.pad_token_id)([pool[i] for i in range(32)])
    adjust_batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in adjust_batch.items()}

    def adjust_step():
        adjust.training_step(adjust.model, dict(adjust_batch))
        adjust.optimizer.step()
        adjust.lr_scheduler.step()
        adjust.model.zero_grad(set_to_none=True)

    results["adjust_step"] = check(f"adjustment step (AdjustTrainer, {results['amp']})", adjust_step, args.warmup,
                                   cuda)

    # continual NLI: a task batch of 32 x 128 plus a side batch of 16 pairs per step
    model = BertForSequenceClassification(config)
    f0 = copy.deepcopy(model.bert)
    cont_args = TrainingArguments(output_dir=os.path.join(tmp, "cont"), **precision, report_to=[], disable_tqdm=True,
                                  max_steps=100, per_device_train_batch_size=32)
    cont = ContinualAlignTrainer(model=model, args=cont_args, processing_class=tok, align_dataset=pool,
                                 alignment_loss=AlignmentLoss(f0, anchor_weight=1.0, align_weight=0.01),
                                 align_batch_size=16)
    cont.create_optimizer_and_scheduler(num_training_steps=100)
    cont.current_gradient_accumulation_steps = 1
    ids = torch.as_tensor(rng.integers(len(SPECIALS), args.vocab, (32, 128)), device=device)
    task = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
            "labels": torch.as_tensor(rng.integers(0, 3, 32), device=device)}

    def continual_step():
        cont.training_step(cont.model, dict(task))
        cont.optimizer.step()
        cont.lr_scheduler.step()
        cont.model.zero_grad(set_to_none=True)
        cont.state.global_step += 1  # a new optimisation step: a new side batch

    results["continual_step"] = check(f"continual NLI step (ContinualAlignTrainer, {results['amp']})",
                                      continual_step, args.warmup, cuda)
    results["ok"] = results["adjust_step"]["ok"] and results["continual_step"]["ok"]
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
