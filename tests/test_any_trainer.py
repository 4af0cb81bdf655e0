"""Continual alignment with the user's own Trainer: every composition order either aligns, with a one-step
update equal to task + α·pull + w·anchor computed by hand in float64, or stops with one line."""
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ddp_continual_script import side_pairs, task_dataset
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hf_xladjust import AlignedPairDataset, AlignmentLoss, ContinualAlignmentError, ContinualAlignTrainer

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
SEED, LR, N_TASK, SIDE = 5, 0.5, 8, 4


class MyTrainer(Trainer):
    """The usual HF override: its own loss (label smoothing), no super(); `loss_is_scaled_for_ga` as the
    Trainer's docstring asks of a per-batch mean."""

    loss_is_scaled_for_ga = False

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = F.cross_entropy(outputs.logits, labels, label_smoothing=0.1)
        return (loss, outputs) if return_outputs else loss


class MySuperTrainer(Trainer):
    """An override that adds a penalty to what super() computes."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        loss = loss + 0.1 * outputs.logits.pow(2).mean()
        return (loss, outputs) if return_outputs else loss


class UserFirst(MyTrainer, ContinualAlignTrainer):
    pass


class OursFirst(ContinualAlignTrainer, MyTrainer):
    pass


class SuperFirst(MySuperTrainer, ContinualAlignTrainer):
    pass


class StepOverride(ContinualAlignTrainer):
    """A training_step override that skips ours: ContinualAlignTrainer.compute_loss still adds the side loss."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        return Trainer.training_step(self, model, inputs, num_items_in_batch)


def items_normalised_ce(outputs, labels, num_items_in_batch=None):
    return F.cross_entropy(outputs.logits, labels, reduction="sum") / num_items_in_batch


def smoothed_ce(model, batch):
    return F.cross_entropy(model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"],
                           label_smoothing=0.1)


def penalised_ce(model, batch):
    out = model(**batch)
    return out.loss + 0.1 * out.logits.pow(2).mean()


# name -> (trainer class, extra kwargs, the task loss by hand)
COMPOSITIONS = {
    "ContinualAlignTrainer": (ContinualAlignTrainer, {}, lambda model, batch: model(**batch).loss),
    "(MyTrainer, ContinualAlignTrainer) no super": (UserFirst, {}, smoothed_ce),
    "(ContinualAlignTrainer, MyTrainer) no super": (OursFirst, {}, smoothed_ce),
    "(MySuperTrainer, ContinualAlignTrainer) super": (SuperFirst, {}, penalised_ce),
    "training_step override without super": (StepOverride, {}, lambda model, batch: model(**batch).loss),
    "compute_loss_func": (ContinualAlignTrainer, {"compute_loss_func": items_normalised_ce},
                          lambda model, batch: model(**batch).loss),
}


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def f0(tiny_model_dir):
    model = AutoModel.from_pretrained(tiny_model_dir, **NO_DROPOUT).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def start_model(model_dir):
    torch.manual_seed(0)
    return BertForSequenceClassification.from_pretrained(model_dir, num_labels=3, **NO_DROPOUT).double()


def one_step(cls, model, tok, out, ga=1, train=True, **kwargs):
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=N_TASK // ga,
                             gradient_accumulation_steps=ga, max_steps=1, optim="sgd", learning_rate=LR,
                             lr_scheduler_type="constant", max_grad_norm=0.0, weight_decay=0.0, logging_steps=1,
                             save_strategy="no", report_to=[], seed=SEED, use_cpu=True, disable_tqdm=True)
    trainer = cls(model=model, args=args, train_dataset=task_dataset(tok, n=N_TASK),
                  data_collator=DataCollatorWithPadding(tok), processing_class=tok, align_batch_size=SIDE, **kwargs)
    if train:
        trainer.train()
    return trainer


def sentence_vectors(encoder, tok, words):
    """[CLS], each word (mean of its subwords), [SEP]: last layer, with gradients."""
    enc = tok(words, is_split_into_words=True, return_tensors="pt")
    h = encoder(**enc).last_hidden_state[0]
    ids = enc.word_ids()
    return torch.stack([h[0], *[h[[i for i, w in enumerate(ids) if w == k]].mean(0) for k in range(len(words))],
                        h[len(ids) - 1]])


def hand_update(model, f0, tok, task_loss, pairs, alpha, w):
    """The parameters after one SGD step on task + α·pull + w·anchor, each term written out: pull over
    every link plus CLS<->CLS and SEP<->SEP (the default), anchor over every English slot."""
    model = copy.deepcopy(model).train()
    batch = DataCollatorWithPadding(tok)([{k: v for k, v in ex.items() if k != "note"}
                                          for ex in task_dataset(tok, n=N_TASK)])
    diffs, anchor_diffs = [], []
    for p in pairs:
        src, tgt = sentence_vectors(model.bert, tok, p.src), sentence_vectors(model.bert, tok, p.tgt)
        links = [(0, 0), (len(p.src) + 1, len(p.tgt) + 1)] + [(i + 1, j + 1) for i, j in p.links]
        diffs += [tgt[j] - src[i] for i, j in links]
        with torch.no_grad():
            src0 = sentence_vectors(f0, tok, p.src)
        anchor_diffs.append(src - src0)
    pull, anchor = torch.stack(diffs).pow(2).mean(), torch.cat(anchor_diffs).pow(2).mean()
    (task_loss(model, batch) + alpha * pull + w * anchor).backward()
    return {n: (p - LR * p.grad).detach() for n, p in model.named_parameters() if p.grad is not None}


def picked_pairs():
    """The side batch of step 0 on rank 0, as documented: numpy.random.default_rng([seed, rank, step])."""
    pool = side_pairs()
    return [pool[i] for i in np.random.default_rng([SEED, 0, 0]).integers(0, len(pool), size=SIDE)]


def assert_update(trainer, expected, away_from, atol=1e-10):
    params = dict(trainer.model.named_parameters())
    assert max((expected[n] - away_from[n]).abs().max().item() for n in expected) > 1e-5  # the side term counts
    for name, value in expected.items():
        torch.testing.assert_close(params[name].detach(), value, rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("ga", [1, 2])
@pytest.mark.parametrize("name", list(COMPOSITIONS))
def test_every_composition_aligns(tiny_model_dir, tok, f0, tmp_path, name, ga):
    cls, kwargs, task_loss = COMPOSITIONS[name]
    model = start_model(tiny_model_dir)
    start = copy.deepcopy(model)
    trainer = one_step(cls, model, tok, tmp_path, ga=ga, align_dataset=side_pairs(),
                       alignment_loss=AlignmentLoss(f0, align_weight=0.3, anchor_weight=0.7), **kwargs)
    pairs = picked_pairs()
    expected = hand_update(start, f0, tok, task_loss, pairs, 0.3, 0.7)
    assert_update(trainer, expected, hand_update(start, f0, tok, task_loss, pairs, 0.0, 0.0))
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 1 and logged[0]["align_loss"] > 0 and logged[0]["anchor_loss"] > 0


def test_defaults_are_the_papers(tiny_model_dir, tok, tmp_path):
    """No alignment_loss: f0 is the model's own checkpoint, α 0.01, anchor weight 1; an AlignmentLoss without
    align_weight (the stage-1 object) gets α 0.01 as well and is left unchanged itself."""
    f0 = AutoModel.from_pretrained(tiny_model_dir, **NO_DROPOUT).double()
    model = start_model(tiny_model_dir)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # away from f0, so that the anchor term has a gradient
        for p in model.bert.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    start = copy.deepcopy(model)
    trainer = one_step(UserFirst, model, tok, tmp_path, train=False, align_dataset=side_pairs())
    loss = trainer.alignment_loss
    assert (loss.align_weight, loss.anchor_weight, trainer.align_batch_size) == (0.01, 1.0, SIDE)
    assert loss.anchor_model.name_or_path == tiny_model_dir
    loss.anchor_model.double()  # loaded in fp32; float64 for the comparison
    trainer.train()
    expected = hand_update(start, f0, tok, smoothed_ce, picked_pairs(), 0.01, 1.0)
    assert_update(trainer, expected, hand_update(start, f0, tok, smoothed_ce, picked_pairs(), 1.0, 1.0))

    stage1 = AlignmentLoss(f0)
    assert stage1.align_weight == 1.0
    trainer = one_step(ContinualAlignTrainer, start_model(tiny_model_dir), tok, tmp_path / "b",
                       align_dataset=AlignedPairDataset(side_pairs(), tok), alignment_loss=stage1)
    assert trainer.alignment_loss.align_weight == 0.01 and stage1.align_weight == 1.0


def test_a_step_without_the_side_loss_stops_with_one_line(tiny_model_dir, tok, f0, tmp_path):
    """Neither our training_step nor our compute_loss runs: the guard stops before the optimizer step."""

    class MyStepTrainer(MyTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            return Trainer.training_step(self, model, inputs, num_items_in_batch)  # no super()

    class UserStepFirst(MyStepTrainer, ContinualAlignTrainer):
        pass

    model = start_model(tiny_model_dir)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ContinualAlignmentError) as err:
        one_step(UserStepFirst, model, tok, tmp_path, align_dataset=side_pairs(), alignment_loss=AlignmentLoss(f0))
    assert "\n" not in str(err.value) and "without the side loss" in str(err.value)
    assert all(torch.equal(p, start[n]) for n, p in model.named_parameters())  # no update was applied
