"""Distance analysis (Fig. 1): AUC, the three word-pair samples, the evaluator and the CLI."""
import json

import numpy as np
import pytest
import torch
from conftest import fixture_lines

from hf_xladjust.alignment.pairs import AlignedPair, write_aligned_pairs
from hf_xladjust.evaluation.distances import (
    KINDS,
    WordDistanceEvaluator,
    distance_auc,
    main,
    roc_auc,
    sample_word_pairs,
)


def _diagonal_pairs(src_lang="en", tgt_lang="es"):
    """Fixture sentence pairs with links i-i up to the shorter sentence (enough for the analysis)."""
    pairs = []
    for s, t in zip(fixture_lines(src_lang), fixture_lines(tgt_lang)):
        s, t = s.split(), t.split()
        pairs.append(AlignedPair(s, t, [(i, i) for i in range(min(len(s), len(t)))]))
    return pairs


def test_roc_auc_by_hand_with_ties():
    # positives 3,2,2 vs negatives 1,2: wins 3>1, 3>2, 2>1, 2>1 = 4; ties 2=2 twice = 1 -> 5/6
    assert roc_auc([3, 2, 2], [1, 2]) == pytest.approx(5 / 6)
    assert roc_auc([1, 1], [1, 1, 1]) == pytest.approx(0.5)
    assert roc_auc([5, 6], [1, 2]) == 1.0 and roc_auc([1, 2], [5, 6]) == 0.0
    # distance: unrelated farther than related -> high AUC; 0.2 vs 0.2 is a tie
    assert distance_auc([0.1, 0.2], [0.2, 0.3]) == pytest.approx(3.5 / 4)
    assert np.isnan(roc_auc([], [1.0]))


def test_word_pair_samples():
    pairs = _diagonal_pairs()
    pairs.append(AlignedPair(list(pairs[0].src), list(pairs[0].tgt), list(pairs[0].links)))  # a duplicate
    samples = sample_word_pairs(pairs, seed=3)
    related, unrelated, hard = samples["related"], samples["unrelated"], samples["hard_control"]
    assert len(related) == len(unrelated) == sum(len(p.links) for p in pairs)
    assert (related[:, 0] == related[:, 2]).all()
    # Unrelated: never the same sentence pair, nor a copy of it; the target word is a linked one.
    assert (unrelated[:, 0] != unrelated[:, 2]).all()
    assert not any(pairs[s].tgt == pairs[t].tgt or pairs[s].src == pairs[t].src for s, _, t, _ in unrelated)
    assert all(any(j == ln[1] for ln in pairs[t].links) for _, _, t, j in unrelated)
    assert (unrelated[:, :2] == related[:, :2]).all()  # the same source words as the related set
    # Hard control: same sentence pair, another linked target word, never a link itself.
    assert len(hard) > 0 and (hard[:, 0] == hard[:, 2]).all()
    assert not any((i, j) in pairs[s].links for s, i, _, j in hard)
    again = sample_word_pairs(pairs, seed=3)
    assert all((again[k] == samples[k]).all() for k in KINDS)
    assert not (sample_word_pairs(pairs, seed=4)["unrelated"] == unrelated).all()


def test_copies_give_zero_related_distance(tiny_model_dir):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModel.from_pretrained(tiny_model_dir)
    model.train()
    pairs = []
    for line in fixture_lines("en"):
        words = line.split()
        pairs.append(AlignedPair(words, list(words), [(i, i) for i in range(len(words))]))
    evaluator = WordDistanceEvaluator(pairs, tokenizer, seed=0, batch_size=5)
    metrics = evaluator(model)
    assert model.training  # the mode is restored
    d = evaluator.distances
    assert len(d["related"]) == metrics["related_count"] == sum(len(p.links) for p in pairs)
    assert np.abs(d["related"]).max() < 1e-5
    assert d["unrelated"].min() > 1e-3 and d["hard_control"].min() > 1e-3
    assert metrics["auc_unrelated"] == 1.0 and metrics["auc_hard_control"] == 1.0
    assert metrics["related_unrelated_ratio"] < 1e-4
    # The same numbers from a task checkpoint's base encoder, and with another layer they change.
    from transformers import BertForSequenceClassification

    task = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    assert evaluator(task)["unrelated_mean"] == pytest.approx(metrics["unrelated_mean"])
    first_layer = WordDistanceEvaluator(pairs, tokenizer, seed=0, layer=1)(model)
    assert first_layer["unrelated_mean"] != pytest.approx(metrics["unrelated_mean"])


def test_cli_writes_png_and_json(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoTokenizer, BertForSequenceClassification

    # A fine-tuned task checkpoint as the second state: it must load as its base encoder.
    task_dir = tmp_path / "task"
    task = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3)
    with torch.no_grad():
        for p in task.bert.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    task.save_pretrained(task_dir)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(task_dir)

    pairs_file = tmp_path / "aligned_pairs.jsonl"
    write_aligned_pairs(str(pairs_file), _diagonal_pairs())
    out = tmp_path / "out"
    rc = main(["--model", f"original={tiny_model_dir}", "--model", f"finetuned={task_dir}",
               "--pairs", str(pairs_file), "--output_dir", str(out), "--max_sentences", "10", "--seed", "1"])
    assert rc == 0
    assert (out / "distances.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "distances.json").read_text())
    assert list(report["models"]) == ["original", "finetuned"]
    keys = {f"{k}_{s}" for k in KINDS for s in ("mean", "median", "count")}
    keys |= {"related_unrelated_ratio", "auc_unrelated", "auc_hard_control", "path"}
    for m in report["models"].values():
        assert keys <= set(m)
        assert 0.0 <= m["auc_unrelated"] <= 1.0
    assert report["counts"]["sentence_pairs"] == 10
    counts = report["counts"]
    assert counts["related"] == counts["unrelated"] == report["models"]["original"]["related_count"]
    a, b = report["models"]["original"], report["models"]["finetuned"]
    assert a["unrelated_mean"] != pytest.approx(b["unrelated_mean"])  # the task encoder's weights were used
    arrays = np.load(out / "distances.npz")
    assert len(arrays["finetuned/related"]) == b["related_count"]
    printed = capsys.readouterr().out
    assert "original" in printed and "AUC unrel" in printed
