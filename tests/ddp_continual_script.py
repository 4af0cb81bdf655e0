"""Shared data helpers for tests/test_continual_trainer.py, and a two-process check of
`ContinualAlignTrainer` under DDP, run by that test as

    accelerate launch --cpu --num_processes 2 tests/ddp_continual_script.py MODEL_DIR OUT_DIR

Each rank writes OUT_DIR/rank{r}.json: its side-batch indices per step, a checksum of every
gradient just before each optimizer step, and a checksum of the final parameters."""
import hashlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import fixture_lines  # noqa: E402

from hf_xladjust.cli import end_process_group  # noqa: E402


def task_dataset(tokenizer, n=32, ignore_every=None):
    """A small NLI-shaped dataset (premise/hypothesis from the fixtures, 3 labels) as a `datasets.Dataset`
    with an extra string column that `remove_unused_columns` has to strip."""
    import datasets

    en, es = fixture_lines("en"), fixture_lines("es")
    prem = [en[i % len(en)] for i in range(n)]
    hyp = [(es if i % 2 else en)[(i * 5 + 1) % len(en)] for i in range(n)]
    enc = tokenizer(prem, hyp, truncation=True, max_length=48)
    labels = [(-100 if ignore_every and i % ignore_every == 0 else i % 3) for i in range(n)]
    return datasets.Dataset.from_dict({**enc, "labels": labels, "note": [f"ex{i}" for i in range(n)]})


def side_pairs(langs=("es", "ru")):
    """Aligned pairs en-xx from the fixtures: links (k, k) over the first min(len) words."""
    from hf_xladjust.alignment.pairs import AlignedPair

    pairs = []
    for lang in langs:
        for s, t in zip(fixture_lines("en"), fixture_lines(lang)):
            s, t = s.split(), t.split()
            pairs.append(AlignedPair(s, t, [(k, k) for k in range(min(len(s), len(t)))]))
    return pairs


def digest(tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run(model_dir, out_dir, find_unused, align_weight=1.0, grad_accum=2, steps=3, user_subclass=False):
    """Train `steps` optimisation steps on two ranks. At step 0 each rank also accumulates, on a plain
    (un-wrapped) copy of the start model, the gradient of exactly what it feeds DDP (its task
    micro-batches and its side batch); the DDP gradient must be the mean of those over the ranks.
    `user_subclass`: instead, a user's Trainer with its own compute_loss (the model's cross-entropy, no
    super()) mixed in before ContinualAlignTrainer; its final parameters are saved for comparison."""
    import copy

    import torch.distributed as dist
    import torch.nn.functional as F
    from transformers import (
        AutoModel,
        AutoTokenizer,
        BertForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    from hf_xladjust.alignment.loss import AlignmentLoss
    from hf_xladjust.alignment.pairs import AlignedPairDataset
    from hf_xladjust.compat import accumulation_steps
    from hf_xladjust.trainers.continual import ContinualAlignTrainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)  # same classifier initialisation on both ranks (DDP would broadcast it anyway)
    model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=3, **no_dropout)
    shadow = copy.deepcopy(model)
    f0 = AutoModel.from_pretrained(model_dir, **no_dropout)
    with torch.no_grad():  # make f0 differ from the start point, so the anchor term has a gradient too
        for p in f0.parameters():
            p.add_(0.02 * torch.randn_like(p))

    record = {"indices": {}, "grads": [], "find_unused_parameters": find_unused}

    class Recorder(ContinualAlignTrainer):
        def _side_indices(self, step):
            idx = super()._side_indices(step)
            record["indices"][str(step)] = idx
            return idx

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.state.global_step == 0 and model.training:
                done, metrics = self._side_done, {k: list(v) for k, v in self._metrics.items()}
                shadow.to(self.args.device).train()
                loss = super().compute_loss(shadow, inputs, num_items_in_batch=num_items_in_batch)
                if not self._loss_is_scaled_for_ga(num_items_in_batch):
                    loss = loss / accumulation_steps(self)
                loss.backward()  # plain autograd: no DDP, no all-reduce
                self._side_done = done
                self._metrics.update(metrics)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    class UserLoss(Trainer):
        loss_is_scaled_for_ga = False  # a per-batch mean, as the Trainer's docstring asks to declare

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = F.cross_entropy(outputs.logits, labels)
            return (loss, outputs) if return_outputs else loss

    class UserRecorder(UserLoss, ContinualAlignTrainer):
        def _side_indices(self, step):
            idx = super()._side_indices(step)
            record["indices"][str(step)] = idx
            return idx

    class GradCheck(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            grads = [p.grad for p in model.parameters()]
            record["grads"].append(digest(grads))
            if state.global_step == 0 and not user_subclass:
                local = torch.cat([p.grad.flatten() for p in shadow.parameters()])
                mean = local.clone()
                dist.all_reduce(mean)
                mean /= dist.get_world_size()
                ddp = torch.cat([g.flatten() for g in grads])
                record["ref_max_abs_diff"] = float((ddp - mean).abs().max())
                record["local_minus_mean_max_abs"] = float((local - mean).abs().max())
                record["grad_max_abs"] = float(ddp.abs().max())

    args = TrainingArguments(output_dir=out_dir, per_device_train_batch_size=4, gradient_accumulation_steps=grad_accum,
                             max_steps=steps, learning_rate=1e-3, max_grad_norm=0.0, logging_steps=1,
                             save_strategy="no", report_to=[], seed=7, use_cpu=True, disable_tqdm=True,
                             ddp_find_unused_parameters=find_unused)
    trainer = (UserRecorder if user_subclass else Recorder)(
        model=model, args=args, train_dataset=task_dataset(tok, n=64), data_collator=DataCollatorWithPadding(tok),
        processing_class=tok, callbacks=[GradCheck()],
        align_dataset=AlignedPairDataset(side_pairs(), tok), align_batch_size=4,
        alignment_loss=AlignmentLoss(f0, anchor_weight=1.0, align_weight=align_weight),
    )
    trainer.train()
    params = [p.detach() for p in trainer.model.parameters()]
    torch.save(torch.cat([p.flatten() for p in params]),
               os.path.join(out_dir, f"params_{'user' if user_subclass else find_unused}_rank{args.process_index}.pt"))
    record.update(rank=trainer.args.process_index, world_size=trainer.args.world_size, params=digest(params),
                  user_subclass=user_subclass,
                  log_history=trainer.state.log_history,
                  model_accepts_loss_kwargs=trainer.model_accepts_loss_kwargs)
    return record


def main(model_dir, out_dir):
    torch.set_num_threads(1)
    records = [run(model_dir, out_dir, find_unused) for find_unused in (False, True)]
    records.append(run(model_dir, out_dir, False, user_subclass=True))
    with open(os.path.join(out_dir, f"rank{records[0]['rank']}.json"), "w") as f:
        json.dump(records, f)
    end_process_group()  # as the scripts do (hf_xladjust.cli.run_main): no gloo group left to the exit


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
