"""ContinualAlignTrainer (Eq. 2): the value of a step's loss, gradient accumulation, equivalence with the
plain Trainer, two DDP ranks, resuming, and the logs (trainer_state and W&B)."""
import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import free_port, independent_info_nce, independent_pull_mse
from ddp_continual_script import side_pairs, task_dataset
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from hf_xladjust.alignment.loss import AlignmentLoss, encoder_of
from hf_xladjust.alignment.pairs import AlignedPairDataset
from hf_xladjust.trainers.continual import (
    ContinualAlignArguments,
    ContinualAlignTrainer,
    continual_kwargs,
    resolve_anchor_path,
)

TESTS = Path(__file__).parent
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def side(tok):
    return AlignedPairDataset(side_pairs(), tok, link_special_tokens=False)  # independent_pull_mse: word links


@pytest.fixture(scope="module")
def f0(tiny_model_dir):
    """The anchor model, moved away from the start point so the anchor term is not zero."""
    model = AutoModel.from_pretrained(tiny_model_dir, **NO_DROPOUT)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=gen))
    return model


def task_model(model_dir, cls=BertForSequenceClassification, dropout=False):
    torch.manual_seed(0)
    return cls.from_pretrained(model_dir, num_labels=3, **({} if dropout else NO_DROPOUT))


def targs(out, **kw):
    base = dict(output_dir=str(out), per_device_train_batch_size=8, max_steps=3, learning_rate=1e-3,
                logging_steps=1, save_strategy="no", report_to=[], seed=11, use_cpu=True, disable_tqdm=True,
                dataloader_num_workers=0)
    return TrainingArguments(**{**base, **kw})


def make_trainer(tok, model, args, side=None, loss=None, cls=ContinualAlignTrainer, n=32, ignore_every=None, **kw):
    extra = {} if cls is Trainer else dict(align_dataset=side, alignment_loss=loss, **kw)
    return cls(model=model, args=args, train_dataset=task_dataset(tok, n=n, ignore_every=ignore_every),
               data_collator=DataCollatorWithPadding(tok), processing_class=tok, **extra)


def independent_anchor_mse(model, f0, tok, pairs):
    """Anchor term computed plainly: every English slot (words by mean of subwords, CLS, SEP) of every
    sentence, current vs f0, squared differences averaged over slots and hidden dimensions."""
    diffs = []
    for p in pairs:
        enc = tok(p.src, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            h, h0 = model(**enc).last_hidden_state[0], f0(**enc).last_hidden_state[0]
        ids = enc.word_ids()
        words = sorted(set(ids) - {None})
        groups = [[i for i, w in enumerate(ids) if w == k] for k in words]
        groups += [[i] for i, w in enumerate(ids) if w is None]  # CLS, SEP: a slot each
        diffs += [h[g].mean(0) - h0[g].mean(0) for g in groups]
    return torch.stack(diffs).pow(2).mean().item()


# ---- 1. the value of one continual step ---------------------------------------------------------------------
def first_step_with_side(trainer, model, picked):
    """One training-mode compute_loss on the first task batch with the side pairs `picked`; returns the
    prepared inputs, that loss, and the task loss alone."""
    trainer._side_indices = lambda step: picked
    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    model.train()
    loss = trainer.compute_loss(model, inputs)
    with torch.no_grad():
        task = model(**inputs).loss.item()
    return inputs, loss, task


def test_step_loss_is_task_plus_weighted_alignment_terms(tiny_model_dir, tok, side, f0, tmp_path):
    model = task_model(tiny_model_dir)
    loss_fn = AlignmentLoss(f0, anchor_weight=0.7, align_weight=0.3)
    trainer = make_trainer(tok, model, targs(tmp_path), side, loss_fn, align_batch_size=4)
    picked = [0, 3, 3, 17]  # with replacement: a pair may come twice
    inputs, loss, task = first_step_with_side(trainer, model, picked)
    pairs = [side.pairs[i] for i in picked]
    pull = independent_pull_mse(encoder_of(model), tok, pairs)
    anchor = independent_anchor_mse(encoder_of(model), f0, tok, pairs)
    assert anchor > 1e-4 and pull > 1e-4
    assert loss.item() == pytest.approx(task + 0.3 * pull + 0.7 * anchor, rel=1e-5)
    assert trainer._metrics[("train", "align_loss")][0].item() == pytest.approx(pull, rel=1e-5)
    assert trainer._metrics[("train", "anchor_loss")][0].item() == pytest.approx(anchor, rel=1e-5)
    # once per optimisation step: a second micro-step of the same step is the task loss alone
    with torch.no_grad():
        assert trainer.compute_loss(model, inputs).item() == pytest.approx(task, rel=1e-6)
        model.eval()  # evaluation: plain task loss
        trainer.state.global_step += 1
        assert trainer.compute_loss(model, inputs).item() == pytest.approx(task, rel=1e-6)
    assert len(trainer._metrics[("train", "align_loss")]) == 1
    eval_data = task_dataset(tok, n=8)
    plain = make_trainer(tok, model, targs(tmp_path), cls=Trainer).evaluate(eval_data)
    ours = trainer.evaluate(eval_data)
    assert ours["eval_loss"] == pytest.approx(plain["eval_loss"], rel=1e-6)
    assert "eval_align_loss" not in ours and "align_loss" not in trainer.state.log_history[-1]


def test_contrastive_side_batch(tiny_model_dir, tok, side, f0, tmp_path):
    """--align_objective contrastive in the side batch: the step's loss is task + α·InfoNCE + anchor, the
    InfoNCE as computed by hand; training logs it as align_loss."""
    model = task_model(tiny_model_dir)
    loss_fn = AlignmentLoss(f0, anchor_weight=0.7, align_weight=0.3, align_objective="contrastive",
                            align_temperature=0.2)
    trainer = make_trainer(tok, model, targs(tmp_path), side, loss_fn, align_batch_size=4)
    picked = [0, 3, 3, 17]  # a pair drawn twice puts copies of its positives among the negatives: kept as drawn
    inputs, loss, task = first_step_with_side(trainer, model, picked)
    pairs = [side.pairs[i] for i in picked]
    encoder = encoder_of(model)
    nce = independent_info_nce(encoder, encoder, tok, pairs, temperature=0.2)
    anchor = independent_anchor_mse(encoder, f0, tok, pairs)
    assert loss.item() == pytest.approx(task + 0.3 * nce + 0.7 * anchor, rel=1e-5)
    assert trainer._metrics[("train", "align_loss")][0].item() == pytest.approx(nce, rel=1e-5)

    trainer = make_trainer(tok, task_model(tiny_model_dir), targs(tmp_path / "train"), side, loss_fn,
                           align_batch_size=4)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 3 and all(h["align_loss"] > 0 and h["anchor_loss"] > 0 for h in logged)


@pytest.mark.parametrize("script", ["run_glue_xl", "run_ner_xl", "run_qa_xl"])
def test_scripts_take_the_contrastive_flags(script):
    import importlib

    parser = importlib.import_module(script).build_parser()
    *_, loss_args, _ = parser.parse_args_into_dataclasses(
        ["--model_name_or_path", "m", "--output_dir", "o", "--align_objective", "contrastive",
         "--align_temperature", "0.05"], look_for_args_file=False)
    assert (loss_args.align_objective, loss_args.align_temperature) == ("contrastive", 0.05)


def test_side_indices_depend_on_seed_rank_step_and_repeat(tiny_model_dir, tok, side, tmp_path, monkeypatch):
    trainer = make_trainer(tok, task_model(tiny_model_dir), targs(tmp_path), side,
                           AlignmentLoss(None, anchor_weight=0.0, align_weight=0.01), align_batch_size=16)
    a, b = trainer._side_indices(5), trainer._side_indices(6)
    assert a == trainer._side_indices(5) and a != b and len(a) == 16
    assert all(0 <= i < len(side) for i in a + b)
    monkeypatch.setattr(TrainingArguments, "process_index", property(lambda self: 1))  # another rank ...
    assert trainer.args.process_index == 1
    assert trainer._side_indices(5) != a  # ... draws another stream


# ---- 2. gradient accumulation --------------------------------------------------------------------------------
class HonoursItemsHead(BertForSequenceClassification):
    """A head whose loss IS normalised by `num_items_in_batch` (sum / items), as the Trainer assumes.
    (`**loss_kwargs`: transformers 4.46 only passes the count to a forward with that name; 4.47+ take
    any `**kwargs`.)"""

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **loss_kwargs):
        n = loss_kwargs.pop("num_items_in_batch", None)
        logits = super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).logits
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, labels, reduction="sum" if n is not None else "mean")
            loss = loss / n if n is not None else loss
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _one_update(model_dir, tok, side, f0, out, cls, bs, ga, align, trainer_cls=ContinualAlignTrainer):
    model = task_model(model_dir, cls=cls)
    loss = AlignmentLoss(f0, anchor_weight=1.0, align_weight=0.5) if align else None
    args = targs(out, per_device_train_batch_size=bs, gradient_accumulation_steps=ga, max_steps=1, optim="sgd",
                 learning_rate=0.5, max_grad_norm=0.0, lr_scheduler_type="constant")
    # every 5th label is ignored: micro-batches hold different numbers of items
    trainer = make_trainer(tok, model, args, side if align else None, loss, cls=trainer_cls, n=32,
                           ignore_every=5 if cls is HonoursItemsHead else None, align_batch_size=4)
    trainer.train()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, trainer


@pytest.mark.parametrize("head", [BertForSequenceClassification, HonoursItemsHead],
                         ids=["ignores_items", "honours_items"])
@pytest.mark.parametrize("align", [False, True], ids=["task_only", "continual"])
def test_gradient_accumulation_gives_the_same_update(tiny_model_dir, tok, side, f0, tmp_path, head, align):
    start = task_model(tiny_model_dir, cls=head).state_dict()
    full, _ = _one_update(tiny_model_dir, tok, side, f0, tmp_path / "a", head, 32, 1, align)
    accum, trainer = _one_update(tiny_model_dir, tok, side, f0, tmp_path / "b", head, 16, 2, align)
    assert trainer.model_accepts_loss_kwargs == (head is HonoursItemsHead)
    moved = max((full[k] - start[k]).abs().max().item() for k in full)
    assert moved > 1e-3
    for k in full:
        torch.testing.assert_close(accum[k], full[k], rtol=0, atol=1e-5, msg=k)
    if align and head is BertForSequenceClassification:
        task_only, _ = _one_update(tiny_model_dir, tok, side, f0, tmp_path / "c", head, 32, 1, False)
        assert max((task_only[k] - full[k]).abs().max().item() for k in full) > 1e-3  # the side batch counts


# ---- 3. zero weights / no data: the plain Trainer --------------------------------------------------------------
def test_without_alignment_it_is_the_plain_trainer(tiny_model_dir, tok, side, tmp_path):
    def history(data=side, **kw):
        trainer = make_trainer(tok, task_model(tiny_model_dir, dropout=True), targs(tmp_path, max_steps=4), data, **kw)
        trainer.train()
        return [(h["loss"], h["grad_norm"]) for h in trainer.state.log_history if "loss" in h], trainer

    plain, _ = history(cls=Trainer)
    zero, trainer = history(loss=AlignmentLoss(None, anchor_weight=0.0, align_weight=0.0))
    assert not trainer.align_enabled
    none, _ = history(data=None, loss=None)
    assert plain == zero == none and len(plain) == 4
    assert not any("align_loss" in h for h in trainer.state.log_history)


# ---- 4. two ranks ------------------------------------------------------------------------------------------------
def test_two_ranks_sync_side_gradients(tiny_model_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    # `--cpu --num_processes 2` starts ONE process in accelerate 1.x (multi-CPU needs mpirun); the
    # torchrun-based launcher gives two gloo ranks on a machine without GPUs.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()),
           str(TESTS / "ddp_continual_script.py"), tiny_model_dir, str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for run0, run1 in zip(*ranks):  # find_unused_parameters False, then True, then a user's subclass
        assert run0["world_size"] == run1["world_size"] == 2
        assert run0["indices"].keys() == run1["indices"].keys() == {"0", "1", "2"}
        assert all(run0["indices"][s] != run1["indices"][s] for s in run0["indices"])
        if not run0["user_subclass"]:
            assert run0["local_minus_mean_max_abs"] > 1e-3  # the ranks' own gradients differ ...
            assert run0["ref_max_abs_diff"] < 1e-6 and run1["ref_max_abs_diff"] < 1e-6  # ... DDP applies their mean
        assert run0["grads"] == run1["grads"] and run0["params"] == run1["params"]
        logged = [h for h in run0["log_history"] if "loss" in h]
        assert len(logged) == 3 and all("align_loss" in h and "anchor_loss" in h for h in logged)
    # (MyTrainer, ContinualAlignTrainer), MyTrainer.compute_loss the model's loss without super(): the same updates
    assert [r["user_subclass"] for r in ranks[0]] == [False, False, True]
    assert ranks[0][2]["indices"] == ranks[0][0]["indices"]
    ours, user = torch.load(tmp_path / "params_False_rank0.pt"), torch.load(tmp_path / "params_user_rank0.pt")
    torch.testing.assert_close(user, ours, rtol=0, atol=1e-6)


# ---- 5. resuming ---------------------------------------------------------------------------------------------------
def test_resume_continues_the_side_stream(tiny_model_dir, tok, side, f0, tmp_path):
    def trainer_for(out):
        args = targs(out, max_steps=4, save_strategy="steps", save_steps=2, save_only_model=False)
        return make_trainer(tok, task_model(tiny_model_dir, dropout=True), args, side,
                            AlignmentLoss(f0, anchor_weight=1.0, align_weight=0.5), align_batch_size=4)

    full = trainer_for(tmp_path / "full")
    full.train()
    resumed = trainer_for(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))

    def tail(trainer):
        return [v for h in trainer.state.log_history if "loss" in h and h["step"] > 2
                for v in (h["step"], h["loss"], h["align_loss"], h["anchor_loss"])]

    assert len(tail(full)) == 2 * 4
    assert tail(resumed) == pytest.approx(tail(full), rel=1e-5)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)


# ---- 6. logs: trainer_state.json and W&B ---------------------------------------------------------------------------
def test_align_metrics_in_trainer_state_and_wandb(tiny_model_dir, tok, side, f0, tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "continual-test")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sent = []  # what the Trainer's WandbCallback hands to wandb.log
    real_log = wandb.sdk.wandb_run.Run.log  # wandb.init() rebinds wandb.log to the run's method
    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log",
                        lambda run, data, *a, **kw: (sent.append(dict(data)), real_log(run, data, *a, **kw))[1])
    args = targs(tmp_path / "out", max_steps=4, logging_steps=2, report_to=["wandb"], run_name="continual")
    trainer = make_trainer(tok, task_model(tiny_model_dir), args, side,
                           AlignmentLoss(f0, anchor_weight=1.0, align_weight=0.01), align_batch_size=4)
    trainer.train()
    trainer.save_state()
    summary = dict(wandb.run.summary)
    wandb.finish()
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "loss" in h]
    assert [h["step"] for h in logged] == [2, 4]
    assert all(h["align_loss"] > 0 and h["anchor_loss"] > 0 for h in logged)
    history = [d for d in sent if "train/loss" in d]
    assert [d["train/global_step"] for d in history] == [2, 4]
    assert [d["train/align_loss"] for d in history] == [h["align_loss"] for h in logged]
    assert [d["train/anchor_loss"] for d in history] == [h["anchor_loss"] for h in logged]
    # the run's own summary (kept by the wandb service) holds the last logged values
    assert summary["train/align_loss"] == logged[-1]["align_loss"] and "train/loss" in summary
    assert len(glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "*.wandb"))) == 1  # the offline run


# ---- arguments and helpers ------------------------------------------------------------------------------------------
def test_arguments_and_anchor_resolution(tiny_model_dir, tok, side, tmp_path):
    from hf_xladjust.alignment.loss import AlignmentLossArguments
    from hf_xladjust.alignment.pairs import AlignmentDataArguments, write_aligned_pairs

    assert not ContinualAlignArguments().enabled
    with pytest.raises(ValueError):
        ContinualAlignArguments(align_source_file="a.en")
    with pytest.raises(ValueError):
        ContinualAlignArguments(align_train_file="x.txt", aligned_pairs="p.jsonl")
    with pytest.raises(ValueError, match="give one of .*--parallel_dataset"):
        ContinualAlignArguments(parallel_dataset="Helsinki-NLP/opus-100", aligned_pairs="p.jsonl")
    hub = ContinualAlignArguments(parallel_dataset="Helsinki-NLP/opus-100", parallel_config="en-es")
    assert hub.enabled and hub.translation_dataset(token=None).config == "en-es"
    adjusted = tmp_path / "adjusted"  # as run_adjust.py leaves it: a model folder plus run_args.json
    shutil.copytree(tiny_model_dir, adjusted)
    (adjusted / "run_args.json").write_text(json.dumps({"model": {"model_name_or_path": tiny_model_dir}}))
    assert resolve_anchor_path(str(adjusted)) == tiny_model_dir
    assert resolve_anchor_path(str(adjusted), "x") == "x"

    write_aligned_pairs(str(tmp_path / "aligned_pairs.jsonl"), side.pairs)
    cont = ContinualAlignArguments(aligned_pairs=str(tmp_path / "aligned_pairs.jsonl"), align_weight=0.02)
    kw = continual_kwargs(cont, AlignmentDataArguments(target_lang="es", max_sentences=10), AlignmentLossArguments(),
                          tok, str(adjusted), seed=3)
    assert len(kw["align_dataset"]) == 10 and kw["align_batch_size"] == 16
    assert kw["alignment_loss"].align_weight == 0.02 and kw["alignment_loss"].anchor_weight == 1.0
    assert not kw["alignment_loss"].anchor_model.training
    assert continual_kwargs(ContinualAlignArguments(), None, None, tok, tiny_model_dir, seed=3) == {}
    contrastive = AlignmentLossArguments(align_objective="contrastive", align_temperature=0.05)
    loss = continual_kwargs(cont, AlignmentDataArguments(target_lang="es", max_sentences=10), contrastive, tok,
                            str(adjusted), seed=3)["alignment_loss"]
    assert (loss.align_objective, loss.align_temperature, loss.align_weight) == ("contrastive", 0.05, 0.02)


def test_model_arguments_reach_the_config_and_f0(tiny_model_dir, tok, side, tmp_path, monkeypatch):
    """`ModelArguments.hub_kwargs()` goes to every from_pretrained; f0 found through an adjusted model's
    run_args.json loads at the revision that adjustment recorded, any other f0 at the run's own."""
    import hf_xladjust.trainers.continual as continual
    from hf_xladjust.alignment.loss import AlignmentLossArguments
    from hf_xladjust.alignment.pairs import AlignmentDataArguments, write_aligned_pairs
    from hf_xladjust.cli import ModelArguments

    cache = str(tmp_path / "cache")
    hub = ModelArguments(model_name_or_path=tiny_model_dir, cache_dir=cache, model_revision="v2", token="hf_t",
                         trust_remote_code=True).hub_kwargs()
    assert hub == {"cache_dir": cache, "revision": "v2", "token": "hf_t", "trust_remote_code": True}
    assert ModelArguments(model_name_or_path="m").hub_kwargs() == {
        "cache_dir": None, "revision": "main", "token": None, "trust_remote_code": False}

    loaded, configs = [], []
    load_config = continual.AutoConfig.from_pretrained
    load_anchor = continual.load_anchor_model
    monkeypatch.setattr(continual, "load_anchor_model",
                        lambda path, **kw: loaded.append((path, kw)) or load_anchor(path))
    monkeypatch.setattr(continual.AutoConfig, "from_pretrained",  # (AutoModel loads its config here too)
                        lambda path, **kw: configs.append(kw) or load_config(path, **kw))
    adjusted = tmp_path / "adjusted"
    shutil.copytree(tiny_model_dir, adjusted)
    (adjusted / "run_args.json").write_text(json.dumps(
        {"model": {"model_name_or_path": tiny_model_dir, "model_revision": "v1"}}))
    write_aligned_pairs(str(tmp_path / "aligned_pairs.jsonl"), side.pairs)
    cont = ContinualAlignArguments(aligned_pairs=str(tmp_path / "aligned_pairs.jsonl"))
    for model in (str(adjusted), tiny_model_dir):
        continual_kwargs(cont, AlignmentDataArguments(target_lang="es"), AlignmentLossArguments(), tok, model,
                         seed=0, **hub)
    assert [kw for kw in configs if "return_unused_kwargs" not in kw] == [hub, hub]
    assert loaded == [(tiny_model_dir, {**hub, "revision": "v1"}), (tiny_model_dir, hub)]
