"""Faithfulness to the paper's code: warm-up on every transformers release, no gradient clipping, CLS/SEP
links, one mixed-language XNLI set for all seeds, length filter before sampling, empty batches, the
paper's sub-batch weighting, and `xx ||| en` corpora (English on the target side)."""
import copy
import json
import sys

import pytest
import torch
from conftest import fixture_lines, paper_alignment_terms
from ddp_continual_script import task_dataset
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    TrainerCallback,
    TrainingArguments,
)

from hf_xladjust.alignment.loss import AlignmentLoss, pool_words
from hf_xladjust.alignment.pairs import (
    AlignedPair,
    AlignedPairCollator,
    AlignedPairDataset,
    AlignmentDataArguments,
    build_aligned_pairs,
)
from hf_xladjust.sampling import subsample_indices
from hf_xladjust.tasks.xnli import LABELS, MIXED_LANGUAGE_SEED, build_mixed_language, read_xnli_tsv
from hf_xladjust.trainers.adjust import AdjustTrainer, AdjustTrainingArguments
from hf_xladjust.trainers.continual import ContinualAlignTrainer

NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModel.from_pretrained(tiny_model_dir, **NO_DROPOUT).eval()


def fixture_pairs(lang="es", n=None):
    """en-xx fixture sentences with links (k, k) on the first min(len) words."""
    pairs = []
    for s, t in zip(fixture_lines("en"), fixture_lines(lang)):
        s, t = s.split(), t.split()
        pairs.append(AlignedPair(s, t, [(k, k) for k in range(min(len(s), len(t)))]))
    return [pairs[i % len(pairs)] for i in range(n or len(pairs))]


def moved_copy(model, scale=0.05, seed=0):
    """A copy of `model` with every weight perturbed: the anchor term against `model` is then > 0."""
    moved = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return moved


def adjust_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, disable_tqdm=True,
                logging_steps=1, dataloader_num_workers=0, seed=3)
    return AdjustTrainingArguments(**{**base, **kw})


class AppliedLearningRates(TrainerCallback):
    """The learning rate of each optimizer step, read from the optimizer right after it stepped (before
    the scheduler moves on): what the Trainer actually applied, on any release."""

    def __init__(self):
        self.rates = []

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append(optimizer.param_groups[0]["lr"])


# --- 1. warm-up --------------------------------------------------------------------------------------

def test_adjustment_warms_up_over_ten_percent_of_the_steps(tmp_path, tok, tiny_model_dir):
    model = AutoModel.from_pretrained(tiny_model_dir)
    rates = AppliedLearningRates()
    args = adjust_args(tmp_path, per_device_train_batch_size=1)  # 40 pairs: 40 steps, warm-up over 4
    trainer = AdjustTrainer(model=model, args=args, train_dataset=AlignedPairDataset(fixture_pairs(n=40), tok),
                            data_collator=AlignedPairCollator(tok.pad_token_id), processing_class=tok,
                            alignment_loss=AlignmentLoss(copy.deepcopy(model)), callbacks=[rates])
    trainer.train()
    lr = args.learning_rate
    assert lr == 5e-5 and len(rates.rates) == 40
    # steps 0, 1, 10% and 50% of the run
    assert rates.rates[0] == pytest.approx(0.0, abs=1e-15)
    assert rates.rates[1] == pytest.approx(lr / 4)
    assert rates.rates[2] == pytest.approx(lr / 2)
    assert rates.rates[4] == pytest.approx(lr) and rates.rates[20] == pytest.approx(lr)
    assert rates.rates[-1] == pytest.approx(lr)  # constant after the warm-up


def test_warmup_ratio_is_read_by_the_installed_release(tmp_path):
    args = adjust_args(tmp_path)
    assert args.get_warmup_steps(40) == 4 and args.get_warmup_steps(32) == 4
    assert adjust_args(tmp_path, warmup_ratio=0.0).get_warmup_steps(40) == 0
    assert adjust_args(tmp_path, warmup_steps=7).get_warmup_steps(40) == 7  # explicit steps win, as on 4.x


# --- 6. no gradient clipping -------------------------------------------------------------------------

def test_adjustment_does_not_clip_gradients(tmp_path, tok, tiny_model_dir):
    """One SGD step with the default arguments moves the weights by lr × the full gradient, whose norm is
    far above the Trainer's usual clipping norm of 1."""
    model = AutoModel.from_pretrained(tiny_model_dir, **NO_DROPOUT)
    f0 = copy.deepcopy(model)
    pairs = fixture_pairs()
    loss_fn = AlignmentLoss(f0, align_weight=1e4, anchor_weight=0.0)
    batch = AlignedPairCollator(tok.pad_token_id)(list(AlignedPairDataset(pairs, tok)))
    reference = copy.deepcopy(model).train()
    loss_fn(reference, batch)["loss"].backward()
    grads = {n: p.grad.clone() for n, p in reference.named_parameters() if p.grad is not None}
    grad_norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values())).item()
    assert grad_norm > 10

    args = adjust_args(tmp_path, per_device_train_batch_size=len(pairs), max_steps=1, optim="sgd",
                       learning_rate=1e-3, warmup_ratio=0.0, lr_scheduler_type="constant")
    assert args.max_grad_norm == 0
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    AdjustTrainer(model=model, args=args, train_dataset=AlignedPairDataset(pairs, tok),
                  data_collator=AlignedPairCollator(tok.pad_token_id), processing_class=tok,
                  alignment_loss=loss_fn).train()
    delta = torch.cat([(p.detach() - start[n]).flatten() for n, p in model.named_parameters()])
    step = torch.cat([-1e-3 * grads.get(n, torch.zeros_like(p)).flatten() for n, p in model.named_parameters()])
    # clipped at 1.0, the step would be grad_norm times shorter
    assert delta.norm().item() == pytest.approx(step.norm().item(), rel=1e-4)
    assert torch.nn.functional.cosine_similarity(delta, step, dim=0).item() == pytest.approx(1.0, abs=1e-5)


# --- 2. CLS<->CLS and SEP<->SEP links ----------------------------------------------------------------

def test_default_loss_is_the_papers_construction_with_cls_and_sep(tok, model):
    data_args = AlignmentDataArguments(target_lang="es")
    assert data_args.link_special_tokens  # the paper's runs pass --include_clssep
    pairs = fixture_pairs()[:6]
    # the independent construction takes the first and last token as CLS and SEP
    enc = tok(pairs[0].src, is_split_into_words=True)
    assert enc["input_ids"][0] == tok.cls_token_id and enc["input_ids"][-1] == tok.sep_token_id
    dataset = AlignedPairDataset(pairs, tok, link_special_tokens=data_args.link_special_tokens)
    assert dataset.special_links == 2 * len(pairs)
    batch = AlignedPairCollator(tok.pad_token_id)(list(dataset))
    moved = moved_copy(model)
    out = AlignmentLoss(model)(moved, batch)
    pull, anchor = paper_alignment_terms(moved, model, tok, pairs, include_clssep=True)
    assert out["align_loss"].item() == pytest.approx(pull, rel=1e-5)
    assert out["anchor_loss"].item() == pytest.approx(anchor, rel=1e-5) and anchor > 1e-4
    without, _ = paper_alignment_terms(moved, model, tok, pairs, include_clssep=False)
    assert without != pytest.approx(pull, rel=1e-3)  # the special links change the value


# --- 6. the paper's sum of sub-batch means -----------------------------------------------------------

def test_sub_batches_sum_their_means_as_the_paper(tok, model):
    # 7 pairs of unequal link counts: sub-batches of 4 and 3 (the last one shorter, as in the paper's loop)
    pairs = [AlignedPair(p.src, p.tgt, p.links[: 1 + k % 3]) for k, p in enumerate(fixture_pairs()[:7])]
    batch = AlignedPairCollator(tok.pad_token_id)(list(AlignedPairDataset(pairs, tok, link_special_tokens=True)))
    moved = moved_copy(model)
    out = AlignmentLoss(model, sub_batch_size=4)(moved, batch)
    pull, anchor = paper_alignment_terms(moved, model, tok, pairs, include_clssep=True, sub_batch_size=4)
    assert out["align_loss"].item() == pytest.approx(pull, rel=1e-5)
    assert out["anchor_loss"].item() == pytest.approx(anchor, rel=1e-5)
    assert out["loss"].item() == pytest.approx(pull + anchor, rel=1e-5)
    one_mean = AlignmentLoss(model)(moved, batch)["align_loss"].item()
    assert one_mean == pytest.approx(paper_alignment_terms(moved, None, tok, pairs)[0], rel=1e-5)
    assert pull != pytest.approx(2 * one_mean, rel=1e-3)  # not a rescaled mean: links weigh differently


# --- 5. empty batches and empty slots ----------------------------------------------------------------

def test_pool_words_gives_empty_slots_a_zero_vector():
    hidden = torch.arange(1 * 3 * 2, dtype=torch.float).reshape(1, 3, 2) + 1
    slot = torch.tensor([[0, 0, 2]])  # slot 1 has no token
    for pooling in ("mean", "first", "last"):
        pooled = pool_words(hidden, slot, 3, pooling)
        assert torch.equal(pooled[1], torch.zeros(2)), pooling
        assert torch.equal(pooled[2], hidden[0, 2]), pooling
    assert torch.equal(pool_words(hidden, slot, 3, "first")[0], hidden[0, 0])
    assert torch.equal(pool_words(hidden, slot, 3, "last")[0], hidden[0, 1])


def truncated_pairs(tok, n_words=12):
    """Pairs whose only link joins the LAST words, which a max_length of 6 cuts away."""
    en, es = fixture_lines("en"), fixture_lines("es")
    pairs = []
    for s, t in zip(en, es):
        s, t = (s + " " + s).split()[:n_words], (t + " " + t).split()[:n_words]
        pairs.append(AlignedPair(s, t, [(len(s) - 1, len(t) - 1)]))
    return pairs


def test_a_batch_without_links_has_pull_term_zero(tok, model):
    dataset = AlignedPairDataset(truncated_pairs(tok)[:3], tok, max_length=6, link_special_tokens=False)
    assert dataset.links_lost == 3
    batch = AlignedPairCollator(tok.pad_token_id)(list(dataset))
    trained = moved_copy(model).train().requires_grad_(True)
    out = AlignmentLoss(model)(trained, batch)
    assert out["num_links"] == 0 and out["align_loss"].item() == 0.0
    assert torch.isfinite(out["loss"]) and out["anchor_loss"].item() > 0
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in trained.parameters() if p.grad is not None)
    frozen = AlignmentLoss(model, pull_target="frozen", sub_batch_size=2)(trained, batch)
    assert frozen["align_loss"].item() == 0.0 and torch.isfinite(frozen["loss"])


def test_adjust_trainer_counts_batches_without_links(tmp_path, tok, tiny_model_dir):
    # two pairs keep a link, two lose it to truncation: batches of one pair
    pairs = fixture_pairs()[:2] + truncated_pairs(tok)[:2]
    dataset = AlignedPairDataset(pairs, tok, max_length=6, link_special_tokens=False)
    model = AutoModel.from_pretrained(tiny_model_dir)
    trainer = AdjustTrainer(model=model, args=adjust_args(tmp_path, per_device_train_batch_size=1),
                            train_dataset=dataset, data_collator=AlignedPairCollator(tok.pad_token_id),
                            processing_class=tok, alignment_loss=AlignmentLoss(copy.deepcopy(model)))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 4 and all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert logs[-1]["batches_without_links"] == 2 and trainer.batches_without_links == 2
    assert sum(h["align_loss"] == 0.0 for h in logs) == 2


def test_continual_side_batch_without_links(tmp_path, tok, tiny_model_dir):
    side = AlignedPairDataset(truncated_pairs(tok), tok, max_length=6, link_special_tokens=False)
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3, **NO_DROPOUT)
    args = TrainingArguments(output_dir=str(tmp_path / "cont"), per_device_train_batch_size=8, max_steps=2,
                             learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True, dataloader_num_workers=0)
    trainer = ContinualAlignTrainer(model=model, args=args, train_dataset=task_dataset(tok, n=16),
                                    data_collator=DataCollatorWithPadding(tok), processing_class=tok,
                                    align_dataset=side, align_batch_size=4,
                                    alignment_loss=AlignmentLoss(AutoModel.from_pretrained(tiny_model_dir)))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2 and all(h["align_loss"] == 0.0 for h in logs)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in logs)
    assert [h["batches_without_links"] for h in logs] == [1, 2]
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- 4. length filter on the whole corpus, then sampling ---------------------------------------------

def test_long_sentences_are_dropped_before_sampling(tmp_path):
    en, es = fixture_lines("en"), fixture_lines("es")
    src, tgt, identical = [], [], []
    for k in range(24):
        if k % 2:  # every other pair is too long on the source side
            src.append(" ".join(f"w{k}_{i}" for i in range(70)))
            tgt.append(es[k % 12])
            identical.append(False)
        elif k % 6 == 0:  # a short pair whose only words are the same strings: no link survives
            src.append(f"Zürich{k} Oslo{k}")
            tgt.append(f"Zürich{k} Oslo{k}")
            identical.append(True)
        else:
            src.append(en[k % 12])
            tgt.append(es[k % 12])
            identical.append(False)
    (tmp_path / "c.en").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "c.es").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    diag = [" ".join(f"{i}-{i}" for i in range(min(len(s.split()), len(t.split())))) for s, t in zip(src, tgt)]
    (tmp_path / "al").write_text("\n".join(diag) + "\n")
    args = AlignmentDataArguments(target_lang="es", aligner="pharaoh", alignment_file=str(tmp_path / "al"),
                                  max_sentences=6)
    pairs, stats = build_aligned_pairs(args, str(tmp_path / "c.en"), str(tmp_path / "c.es"), seed=5)
    short = [k for k in range(24) if k % 2 == 0]
    sampled = [short[i] for i in subsample_indices(len(short), 6, 5)]
    expected = [k for k in sampled if not identical[k]]
    assert any(identical[k] for k in sampled)  # the seed samples a pair that then loses its links
    assert [p.src for p in pairs] == [src[k].split() for k in expected]
    assert stats["sentences_in_corpus"] == 24 and stats["sentences_too_long"] == 12
    assert stats["sentences_read"] == 6 and stats["sentences_kept"] == len(expected)
    assert stats["sentences_without_links"] == 6 - len(expected)


# --- 7. which side is English ------------------------------------------------------------------------

def test_english_on_the_target_side(tmp_path, tok, model):
    en, es = fixture_lines("en"), fixture_lines("es")
    diag = [[(i, i + 1) for i in range(min(len(a.split()), len(b.split()) - 1))] for a, b in zip(en, es)]
    (tmp_path / "en-es.txt").write_text("".join(f"{a} ||| {b}\n" for a, b in zip(en, es)), encoding="utf-8")
    (tmp_path / "en-es.al").write_text("".join(" ".join(f"{i}-{j}" for i, j in d) + "\n" for d in diag))
    (tmp_path / "es-en.txt").write_text("".join(f"{b} ||| {a}\n" for a, b in zip(en, es)), encoding="utf-8")
    (tmp_path / "es-en.al").write_text("".join(" ".join(f"{j}-{i}" for i, j in d) + "\n" for d in diag))

    def build(name, **kw):
        args = AlignmentDataArguments(aligner="pharaoh", alignment_file=str(tmp_path / f"{name}.al"),
                                      drop_identical=False, **kw)
        return build_aligned_pairs(args, train_file=str(tmp_path / f"{name}.txt"))

    original, stats = build("en-es", target_lang="es")
    assert stats["english_side"] == "source"
    by_languages, stats = build("es-en", source_lang="es", target_lang="en")
    by_flag, _ = build("es-en", target_lang="es", english_side="target")
    assert stats["english_side"] == "target"
    assert by_languages == original and by_flag == original
    assert original[0].src == en[0].split()

    # the loss of the reversed file equals that of the original; read as is, the anchor would sit on Spanish.
    # Only embeddings of subwords that occur in English and never in Spanish move, so an anchor on the
    # Spanish side is exactly 0 and one on the English side is not, whatever the vocabulary.
    english_ids = {i for line in en for i in tok(line)["input_ids"]}
    spanish_ids = {i for line in es for i in tok(line)["input_ids"]}
    english_only = sorted(english_ids - spanish_ids)
    assert english_only
    moved = copy.deepcopy(model)
    with torch.no_grad():
        rows = moved.embeddings.word_embeddings.weight[english_only]
        rows += torch.randn(rows.shape, generator=torch.Generator().manual_seed(0))
        moved.embeddings.word_embeddings.weight[english_only] = rows

    def losses(pairs):
        batch = AlignedPairCollator(tok.pad_token_id)(list(AlignedPairDataset(pairs, tok)))
        return AlignmentLoss(model, pull_target="frozen")(moved, batch)

    as_is, _ = build("es-en", source_lang="es", target_lang="xx", english_side="source")
    reference, reversed_file = losses(original), losses(by_languages)
    assert reversed_file["loss"].item() == pytest.approx(reference["loss"].item(), rel=1e-6)
    assert reversed_file["anchor_loss"].item() == pytest.approx(reference["anchor_loss"].item(), rel=1e-6)
    assert reference["anchor_loss"].item() > 1e-4
    assert losses(as_is)["anchor_loss"].item() == 0.0
    with pytest.raises(ValueError, match="english_side"):
        AlignmentDataArguments(source_lang="es", target_lang="en", english_side="source")


# --- 3. one mixed-language XNLI set for every seed ---------------------------------------------------

def write_tsvs(folder, n=12):
    folder.mkdir(parents=True, exist_ok=True)
    for lang in ("en", "es"):
        lines = fixture_lines(lang)
        rows = [(lines[i % len(lines)], lines[(i * 5 + 1) % len(lines)], LABELS[i % 3]) for i in range(n)]
        (folder / f"test-{lang}.tsv").write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return str(folder / "test-{lang}.tsv")


def predict_mixed(monkeypatch, model_dir, pattern, out, *extra):
    import run_glue_xl

    monkeypatch.setattr(sys, "argv", [
        "run_glue_xl.py", "--model_name_or_path", str(model_dir), "--test_file_pattern", pattern,
        "--eval_languages", "es", "--mixed_language_eval", "--do_predict", "--output_dir", str(out),
        "--report_to", "none", "--use_cpu", "--disable_tqdm", "true", *map(str, extra)])
    run_glue_xl.main()
    records = (out / "predictions_test_mixed_es.jsonl").read_text().splitlines()
    return [json.loads(ln)["english_side"] for ln in records]


def test_every_seed_evaluates_the_same_mixed_set(tmp_path, tiny_model_dir, monkeypatch):
    pattern = write_tsvs(tmp_path / "data")
    sides_1 = predict_mixed(monkeypatch, tiny_model_dir, pattern, tmp_path / "s1", "--seed", "1")
    sides_2 = predict_mixed(monkeypatch, tiny_model_dir, pattern, tmp_path / "s2", "--seed", "2")
    target, english = (read_xnli_tsv(pattern.format(lang=lang)) for lang in ("es", "en"))
    expected = [m.english_side for m in build_mixed_language(target, english, seed=MIXED_LANGUAGE_SEED)]
    assert sides_1 == sides_2 == expected
    assert len(set(expected)) == 2
    recorded = json.loads((tmp_path / "s1" / "mixed_language_sets" / "test_mixed_es.json").read_text())
    assert recorded["english_side"] == expected and recorded["seed"] == MIXED_LANGUAGE_SEED

    # a recorded set is reused as it is: here one edited by hand to put English on the hypothesis side
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "test_mixed_es.json").write_text(json.dumps({"english_side": ["hypothesis"] * 20}))
    sides = predict_mixed(monkeypatch, tiny_model_dir, pattern, tmp_path / "s3", "--seed", "3",
                          "--mixed_language_sets", shared)
    assert sides == ["hypothesis"] * 12


@pytest.mark.parametrize("script, cls, lr, epochs", [("run_glue_xl", "NLITrainingArguments", 5e-5, 2),
                                                      ("run_ner_xl", "NERTrainingArguments", 2e-5, 3),
                                                      ("run_qa_xl", "QATrainingArguments", 3e-5, 2)])
def test_fine_tuning_defaults_follow_the_papers_loops(tmp_path, script, cls, lr, epochs):
    import importlib

    args = getattr(importlib.import_module(script), cls)(output_dir=str(tmp_path))
    assert args.max_grad_norm == 0 and args.adam_epsilon == 1e-6
    assert args.lr_scheduler_type == "linear" and args.get_warmup_steps(100) == 0
    assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (lr, epochs, 32)

