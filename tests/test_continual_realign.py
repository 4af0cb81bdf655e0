"""Issue 19 in continual alignment: --align_schedule alternate (optimizer steps alternate task / alignment-only,
each with the gradient of its own loss, computed by hand), --freeze_layers (frozen layers byte-identical after
fine-tuning), --align_level sentence in the side batch, and the one-line refusals of the run_*_xl.py scripts
(LoRA in continual alignment: tests/test_continual_lora.py)."""
import copy
import importlib
import sys

import pytest
import torch
import torch.nn.functional as F
from ddp_continual_script import side_pairs, task_dataset
from transformers import AutoModel, AutoTokenizer, BertForSequenceClassification, DataCollatorWithPadding

from hf_xladjust.alignment.loss import AlignmentLoss, AlignmentLossArguments
from hf_xladjust.alignment.pairs import AlignedPairDataset, AlignmentDataArguments, write_aligned_pairs
from hf_xladjust.alignment.realign import RealignmentArguments
from hf_xladjust.alignment.sentence import SentenceAlignmentLoss
from hf_xladjust.errors import InputError
from hf_xladjust.trainers.continual import (
    ContinualAlignArguments,
    ContinualAlignTrainer,
    check_realign_options,
    continual_kwargs,
)

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
LR, ALIGN_W, ANCHOR_W, STEPS = 0.1, 0.3, 0.7, 3


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def task_model(model_dir):
    torch.manual_seed(0)
    return BertForSequenceClassification.from_pretrained(model_dir, num_labels=3, **NO_DROPOUT)


def shifted_f0(model_dir):
    """f0 moved away from the start point, so that the anchor term has a gradient from the first step."""
    model = AutoModel.from_pretrained(model_dir, **NO_DROPOUT)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model.eval()


def targs(out, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(out), per_device_train_batch_size=8, max_steps=STEPS, learning_rate=LR,
                lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[], seed=11,
                use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, max_grad_norm=0.0)
    return TrainingArguments(**{**base, **kw})


# ---- hand computations (plain loops, with autograd) -------------------------------------------------------
def word_vectors(encoder, tok, words):
    """Vectors of each word (mean of its subwords) and of each special token, last layer, one sentence."""
    enc = tok(words, is_split_into_words=True, return_tensors="pt")
    h = encoder(**enc).last_hidden_state[0]
    ids = enc.word_ids()
    per_word = {k: h[[i for i, w in enumerate(ids) if w == k]].mean(0) for k in set(ids) - {None}}
    special = [h[i] for i, w in enumerate(ids) if w is None]
    return per_word, special


def hand_alignment_loss(encoder, f0, tok, pairs):
    """α·pull + w·anchor: pull = squared differences of linked word vectors averaged over links and dimensions;
    anchor = English word and special-token vectors against f0's, averaged the same way."""
    pull, anchor = [], []
    for p in pairs:
        (src, src_special), (tgt, _) = word_vectors(encoder, tok, p.src), word_vectors(encoder, tok, p.tgt)
        with torch.no_grad():
            src0, src0_special = word_vectors(f0, tok, p.src)
        pull += [tgt[j] - src[i] for i, j in p.links]
        anchor += [src[k] - src0[k] for k in sorted(src)] + [a - b for a, b in zip(src_special, src0_special)]
    return ALIGN_W * torch.stack(pull).pow(2).mean() + ANCHOR_W * torch.stack(anchor).pow(2).mean()


def hand_task_loss(model, dataset):
    """Mean cross-entropy of the examples, one at a time without padding."""
    losses = []
    for ex in dataset:
        inputs = {k: torch.tensor([ex[k]]) for k in ("input_ids", "token_type_ids", "attention_mask")}
        losses.append(F.cross_entropy(model(**inputs).logits, torch.tensor([ex["labels"]])))
    return torch.stack(losses).mean()


def hand_grads(model, loss_fn):
    """{name: gradient} of loss_fn(copy) at the model's current parameters (a copy: the model is untouched)."""
    twin = copy.deepcopy(model)
    twin.zero_grad(set_to_none=True)
    loss_fn(twin).backward()
    return {n: p.grad.clone() for n, p in twin.named_parameters() if p.grad is not None}


def test_alternate_schedule_alternates_task_and_alignment_only_steps(tiny_model_dir, tok, tmp_path):
    model = task_model(tiny_model_dir)
    f0 = shifted_f0(tiny_model_dir)
    side = AlignedPairDataset(side_pairs(), tok, link_special_tokens=False)
    data = task_dataset(tok, n=8)  # one batch of 8: every task step sees the whole set
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    trainer = ContinualAlignTrainer(
        model=model, args=targs(tmp_path), train_dataset=data, data_collator=DataCollatorWithPadding(tok),
        processing_class=tok, optimizers=(optimizer, None), align_dataset=side, align_batch_size=4,
        alignment_loss=AlignmentLoss(f0, anchor_weight=ANCHOR_W, align_weight=ALIGN_W), align_schedule="alternate")
    task_rows = data.remove_columns(["note"])
    steps = []  # (kind, max |grad - hand grad|, max |param after - (param before - lr·hand grad)|)

    def before(opt, *_):
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        kind = "task" if "classifier.weight" in grads else "align"
        if kind == "align":  # after task step s (global_step = s + 1): the side batch of step s
            pairs = [side.pairs[i] for i in trainer._side_indices(trainer.state.global_step - 1)]
            expected = hand_grads(model, lambda m: hand_alignment_loss(m.bert, f0, tok, pairs))
        else:
            expected = hand_grads(model, lambda m: hand_task_loss(m, task_rows))
        assert sorted(grads) == sorted(expected)  # alignment steps: no gradient on the head at all
        err = max((grads[n] - expected[n]).abs().max().item() for n in grads)
        steps.append([kind, err, {n: (p.detach().clone(), expected.get(n)) for n, p in model.named_parameters()}])

    def after(opt, *_):
        moved = steps[-1].pop()
        steps[-1].append(max((p.detach() - (p0 - LR * g if g is not None else p0)).abs().max().item()
                             for (n, p), (p0, g) in zip(model.named_parameters(), moved.values())))

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)
    trainer.train()

    assert [s[0] for s in steps] == ["task", "align"] * STEPS
    assert trainer.align_steps == STEPS and trainer.state.global_step == STEPS  # global_step counts task steps
    for kind, grad_err, param_err in steps:
        assert grad_err < 1e-5 and param_err < 1e-6, (kind, grad_err, param_err)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["align_steps"] for h in logged] == [1, 2, 3]
    assert all(h["align_loss"] > 0 and h["anchor_loss"] > 0 for h in logged)
    # `loss` is the task loss of the step alone (no side term added to it)
    assert logged[0]["loss"] == pytest.approx(hand_task_loss(task_model(tiny_model_dir), task_rows).item(), rel=1e-4)


def test_alternate_refused_with_several_processes(tiny_model_dir, tok, tmp_path, monkeypatch):
    from transformers import TrainingArguments

    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: 2))
    with pytest.raises(InputError, match="--align_schedule alternate runs in one process only"):
        ContinualAlignTrainer(model=task_model(tiny_model_dir), args=targs(tmp_path), train_dataset=task_dataset(tok),
                              processing_class=tok, align_dataset=side_pairs(), align_schedule="alternate",
                              alignment_loss=AlignmentLoss(None, anchor_weight=0.0, align_weight=0.01))


def continual_setup(tiny_model_dir, tok, tmp_path, schedule, **realign):
    pairs_file = tmp_path / "aligned_pairs.jsonl"
    write_aligned_pairs(str(pairs_file), side_pairs())
    model = task_model(tiny_model_dir)
    cont = ContinualAlignArguments(aligned_pairs=str(pairs_file), align_batch_size=4, align_schedule=schedule)
    kw = continual_kwargs(cont, AlignmentDataArguments(), AlignmentLossArguments(), tok, tiny_model_dir, seed=0,
                          realign_args=RealignmentArguments(**realign), model=model)
    return model, kw


@pytest.mark.parametrize("schedule, level", [("sum", "word"), ("alternate", "sentence")])
def test_frozen_layers_stay_byte_identical_in_continual_training(tiny_model_dir, tok, tmp_path, schedule, level):
    model, kw = continual_setup(tiny_model_dir, tok, tmp_path, schedule, freeze_layers="lower", align_level=level)
    assert kw["align_schedule"] == schedule
    assert isinstance(kw["alignment_loss"], SentenceAlignmentLoss) == (level == "sentence")
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = ContinualAlignTrainer(model=model, args=targs(tmp_path / "out", learning_rate=1e-2),
                                    train_dataset=task_dataset(tok, n=16), data_collator=DataCollatorWithPadding(tok),
                                    processing_class=tok, **kw)
    trainer.train()
    # the tiny BERT has 2 blocks: lower = block 0 (hidden state 1); embeddings, block 1 and the head train
    frozen = [n for n in start if n.startswith("bert.encoder.layer.0.")]
    assert frozen and all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    for name, p in model.named_parameters():
        same = torch.equal(p.detach(), start[name])
        if name in frozen:
            assert same and p.detach().numpy().tobytes() == start[name].numpy().tobytes(), name
        elif name.startswith(("bert.encoder.layer.1.", "classifier.", "bert.embeddings.word")):
            assert not same, name
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == STEPS and all(h["align_loss"] > 0 for h in logged)


def test_one_line_refusals(tok, tmp_path):
    cont_off = ContinualAlignArguments()
    loss_args = AlignmentLossArguments()
    with pytest.raises(InputError, match=r"^--lora_r in fine-tuning works with continual alignment only"):
        check_realign_options(cont_off, loss_args, RealignmentArguments(lora_r=8))
    with pytest.raises(InputError, match=r"^--freeze_layers configure continual alignment: give aligned data"):
        check_realign_options(cont_off, loss_args, RealignmentArguments(freeze_layers="lower"))
    with pytest.raises(InputError, match=r"^--align_level sentence configure continual alignment"):
        check_realign_options(ContinualAlignArguments(aligned_pairs="p.jsonl"), loss_args,
                              RealignmentArguments(align_level="sentence"), do_train=False)
    check_realign_options(cont_off, loss_args, RealignmentArguments())  # nothing asked: fine
    with pytest.raises(InputError, match="--align_schedule must be one of"):
        ContinualAlignArguments(align_schedule="interleave")


@pytest.mark.parametrize("script", ["run_glue_xl", "run_ner_xl", "run_qa_xl"])
def test_scripts_take_the_realignment_flags(script):
    parser = importlib.import_module(script).build_parser()
    parsed = {type(p).__name__: p for p in parser.parse_args_into_dataclasses(
        ["--model_name_or_path", "m", "--output_dir", "o", "--align_schedule", "alternate", "--freeze_layers", "0,1",
         "--align_level", "sentence", "--align_layer", "1"], look_for_args_file=False)}
    assert parsed["ContinualAlignArguments"].align_schedule == "alternate"
    assert (parsed["RealignmentArguments"].freeze_layers, parsed["RealignmentArguments"].align_level) == \
        ("0,1", "sentence")
    assert parsed["AlignmentLossArguments"].align_layer == 1


def test_script_refuses_plain_lora_fine_tuning_in_one_line(tiny_model_dir, tmp_path, monkeypatch):
    """--lora_r without aligned data (plain fine-tuning) is refused; with it, see tests/test_continual_lora.py."""
    import run_glue_xl

    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["run_glue_xl.py", "--model_name_or_path", tiny_model_dir, "--output_dir",
                                      str(out), "--do_train", "--lora_r", "4",
                                      "--train_file", str(tmp_path / "t.tsv")])
    (tmp_path / "t.tsv").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        run_glue_xl.run_main(run_glue_xl.main)
    assert "--lora_r in fine-tuning works with continual alignment only" in str(exit_info.value.code)
    assert "\n" not in str(exit_info.value.code).strip()
