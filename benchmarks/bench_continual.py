#!/usr/bin/env python
"""Cost of continual alignment: one `ContinualAlignTrainer` step vs one plain `Trainer` step.

A random mid-size BERT (default 4 layers x 256 hidden, 30K vocabulary), an NLI batch of 32 x 128
tokens, and a side batch of 16 sentence pairs of 30 synthetic words (one token per word, so 32
tokens per sentence with CLS/SEP), every word linked. Both trainers run `training_step` (forward +
backward) on the same inputs, interleaved, after warm-up; the median of several runs is reported,
with and without the AdamW update.

Token-count floor (what the extra work costs if time were proportional to tokens processed):

    floor = (T_task + T_side + T_f0 / 3) / T_task
    T_task = task batch x task length                    (forward + backward)
    T_side = 2 x side pairs x padded side length         (src and tgt stacked, forward + backward)
    T_f0   = side pairs x padded source length           (f0 forward of the English side only; a
                                                          forward is ~1/3 of a forward + backward)

    python benchmarks/bench_continual.py [--layers 4 --hidden 256 --repeats 7]
"""
import argparse
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast, Trainer, TrainingArguments  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from hf_xladjust.alignment.loss import AlignmentLoss  # noqa: E402
from hf_xladjust.alignment.pairs import AlignedPair, AlignedPairDataset  # noqa: E402
from hf_xladjust.precision import cpu_bf16_support, resolve_amp  # noqa: E402
from hf_xladjust.trainers.continual import ContinualAlignTrainer  # noqa: E402

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def bert_config(args):
    """The random BERT these benchmarks time: args.layers x args.hidden (64-dim heads), 3 labels."""
    return BertConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                      num_attention_heads=max(1, args.hidden // 64), intermediate_size=4 * args.hidden,
                      max_position_embeddings=512, num_labels=3)


def word_tokenizer(vocab_size, out_dir):
    """A WordPiece tokenizer whose vocabulary is `vocab_size` whole words w0, w1, ..."""
    path = os.path.join(out_dir, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(SPECIALS + [f"w{i}" for i in range(vocab_size - len(SPECIALS))]) + "\n")
    return BertTokenizerFast(vocab_file=path, do_lower_case=False, model_max_length=512)


def timed(fn, sync=lambda: None):
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=30000)
    parser.add_argument("--task_batch", type=int, default=32)
    parser.add_argument("--task_length", type=int, default=128)
    parser.add_argument("--side_pairs", type=int, default=16)
    parser.add_argument("--side_words", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--amp", choices=["auto", "no", "bf16"], default="auto",
                        help="auto: bf16 on a GPU with bf16 or a CPU with AMX / AVX512-BF16, else fp32")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    amp = resolve_amp(args.amp, device)

    tmp = tempfile.mkdtemp(prefix="bench_continual_")
    tok = word_tokenizer(args.vocab, tmp)
    config = bert_config(args)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    f0 = copy.deepcopy(model.bert)

    rng = np.random.default_rng(0)
    n_words = args.vocab - len(SPECIALS)
    pairs = []
    for _ in range(64):  # the pool; each step samples side_pairs of them
        src = [f"w{i}" for i in rng.integers(0, n_words, args.side_words)]
        tgt = [f"w{i}" for i in rng.integers(0, n_words, args.side_words)]
        pairs.append(AlignedPair(src, tgt, [(k, k) for k in range(args.side_words)]))
    side = AlignedPairDataset(pairs, tok, max_length=512)

    ids = torch.as_tensor(rng.integers(len(SPECIALS), args.vocab, (args.task_batch, args.task_length)))
    task = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
            "labels": torch.as_tensor(rng.integers(0, 3, args.task_batch))}

    targs = TrainingArguments(output_dir=os.path.join(tmp, "out"), per_device_train_batch_size=args.task_batch,
                              report_to=[], use_cpu=device == "cpu", disable_tqdm=True, max_steps=100,
                              bf16=amp == "bf16")
    plain = Trainer(model=model, args=targs)
    cont = ContinualAlignTrainer(model=copy.deepcopy(model), args=targs, processing_class=tok, align_dataset=side,
                                 alignment_loss=AlignmentLoss(f0, anchor_weight=1.0, align_weight=0.01),
                                 align_batch_size=args.side_pairs)
    for trainer in (plain, cont):
        trainer.create_optimizer_and_scheduler(num_training_steps=100)
        trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which we bypass

    def step(trainer, with_optimizer):
        def run():
            trainer.training_step(trainer.model, dict(task))
            if with_optimizer:
                trainer.optimizer.step()
            trainer.model.zero_grad(set_to_none=True)
            trainer.state.global_step += 1  # a new optimisation step: a new side batch
        return run

    side_batch = cont.align_collator([side[i] for i in cont._side_indices(0)])
    side_len = side_batch["src_input_ids"].shape[1]
    stacked_len = max(side_len, side_batch["tgt_input_ids"].shape[1])
    t_task = args.task_batch * args.task_length
    t_side = 2 * args.side_pairs * stacked_len
    t_f0 = args.side_pairs * side_len
    floor = (t_task + t_side + t_f0 / 3) / t_task

    print(f"device={device} amp={amp or 'no'} (CPU bf16: {cpu_bf16_support() or 'none'}) "
          f"torch_threads={torch.get_num_threads()} model: {args.layers} layers x {args.hidden} "
          f"hidden, vocab {args.vocab}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    print(f"task batch {args.task_batch} x {args.task_length} = {t_task} tokens; side batch {args.side_pairs} pairs "
          f"x {args.side_words} words -> stacked {2 * args.side_pairs} x {stacked_len} = {t_side} tokens; "
          f"f0 English side {args.side_pairs} x {side_len} = {t_f0} tokens (forward only)")
    print(f"token-count floor = (T_task + T_side + T_f0/3) / T_task = ({t_task} + {t_side} + {t_f0}/3) / {t_task} "
          f"= {floor:.3f}")
    for with_optimizer in (False, True):
        times = {"plain": [], "continual": []}
        for r in range(args.warmup + args.repeats):
            for name, trainer in (("plain", plain), ("continual", cont)):
                t = timed(step(trainer, with_optimizer), sync)
                if r >= args.warmup:
                    times[name].append(t)
        tp, tc = statistics.median(times["plain"]), statistics.median(times["continual"])
        ratio = tc / tp
        label = "fwd+bwd+AdamW" if with_optimizer else "fwd+bwd      "
        print(f"[{label}] plain Trainer step {tp * 1000:8.1f} ms | ContinualAlignTrainer step {tc * 1000:8.1f} ms | "
              f"ratio {ratio:.3f} | floor {floor:.3f} | ratio/floor {ratio / floor:.3f} "
              f"(median of {args.repeats}, spread plain {min(times['plain']) * 1000:.0f}-"
              f"{max(times['plain']) * 1000:.0f} ms, continual {min(times['continual']) * 1000:.0f}-"
              f"{max(times['continual']) * 1000:.0f} ms)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
