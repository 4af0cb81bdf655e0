"""`python -m hf_xladjust.report`: a hand-made table from fixture prediction files, every task's cell
checked against an independent computation, refusals of unpairable files, and Fig. 1 model states
drawn from a results folder."""
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import build_tiny_model, fixture_lines
from scipy import stats

from hf_xladjust.errors import InputError
from hf_xladjust.evaluation.tagging import counts as token_counts
from hf_xladjust.report import ReportArguments, build_report, column_for, main, read_predictions
from hf_xladjust.statistics import permutation_test_f1

FIXTURES = Path(__file__).parent / "fixtures" / "report"

# Written by hand from tests/fixtures/report (2 seeds x 10 examples; accuracies k/10 give means in steps of 5):
#   en: original 8/10, 7/10 -> 75.0 (the shared original folder serves both language columns); adjusted-es 9, 8 -> 85.0
#   es: original 2, 2 -> 20.0; adjusted 8, 8 -> 80.0; adjusted_cont 9, 9 -> 90.0
#   ru: original 5, 5 -> 50.0; adjusted 6, 5 -> 55.0; adjusted_cont 10, 9 -> 95.0
EXPECTED_MD = """\
| model | en (es) | en (ru) | es | ru |
| --- | ---: | ---: | ---: | ---: |
| Original | 75.0 | 75.0 | 20.0 | 50.0 |
| Adjusted | 85.0 | - | 80.0* | 55.0 |
| Adj + cont | - | - | 90.0* | 95.0*,** |
"""
EXPECTED_CSV = """\
model,en (es),en (ru),es,ru
Original,75.0,75.0,20.0,50.0
Adjusted,85.0,-,80.0*,55.0
Adj + cont,-,-,90.0*,"95.0*,**"
"""


def _results_from_fixtures(root: Path, original: str = "grid") -> Path:
    """The grid's layout, nli/{regime}/{lang}/seed{n}, with the original model's files (every
    language's) in nli/original/all/seed{n} linked from {lang}/seed{n} ("grid"), or a language
    folder linked to a shared one ("links"), or copied into each language folder ("copies")."""
    results = root / "results"
    shutil.copytree(FIXTURES / "nli", results / "nli")
    orig = results / "nli" / "original"
    if original == "grid":
        shutil.copytree(FIXTURES / "original_all", orig / "all")
    for lang in ("es", "ru"):
        if original == "grid":
            for seed in ("seed0", "seed1"):
                (orig / lang).mkdir(parents=True, exist_ok=True)
                os.symlink(orig / "all" / seed, orig / lang / seed, target_is_directory=True)
        elif original == "links":
            orig.mkdir(exist_ok=True)
            os.symlink(FIXTURES / "original_all", orig / lang, target_is_directory=True)
        else:
            shutil.copytree(FIXTURES / "original_all", orig / lang)
    return results


def _correct(path):
    with open(path) as f:
        return {r["id"]: float(r["correct"]) for r in map(json.loads, f)}


def _ttest_by_hand(a, b):
    d = np.asarray(a) - np.asarray(b)
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    return 2 * stats.t.sf(abs(t), len(d) - 1)


@pytest.mark.parametrize("original", ["grid", "links", "copies"])
def test_report_reproduces_the_hand_made_table(tmp_path, capsys, original):
    results = _results_from_fixtures(tmp_path, original)
    out = tmp_path / "tables"
    assert main([str(results), "--output_dir", str(out)]) == 0
    assert (out / "nli.md").read_text() == EXPECTED_MD
    assert (out / "nli.csv").read_text() == EXPECTED_CSV
    assert EXPECTED_MD in capsys.readouterr().out
    assert EXPECTED_MD in (out / "report.md").read_text()
    # The p-values behind the marks follow each table (checked against the t formula below).
    assert ("| Adjusted | 0.168 | - | 0.000959 | 0.591 |\n"
            "| Adj + cont | - | - | 0.000136 / 0.168 | 0.00999 / 0.0107 |\n") in (out / "report.md").read_text()

    # Means, standard deviations and p-values in the JSON, recomputed here from the files.
    report = json.loads((out / "report.json").read_text())
    cells = {c["label"]: c["cells"] for c in report["tasks"]["nli"]["columns"]}
    fx = {"original": FIXTURES / "original_all", "adjusted": FIXTURES / "nli" / "adjusted",
          "adjusted_cont": FIXTURES / "nli" / "adjusted_cont"}

    def per_example(regime, lang, set_name):
        folder = fx[regime] if regime == "original" else fx[regime] / lang
        seeds = [_correct(folder / f"seed{s}" / f"predictions_test_{set_name}.jsonl") for s in (0, 1)]
        ids = sorted(seeds[0])
        return np.array([[s[i] for i in ids] for s in seeds])

    marks_seen = {}
    for lang in ("es", "ru"):
        orig = per_example("original", lang, lang)
        for regime in ("adjusted", "adjusted_cont"):
            x = per_example(regime, lang, lang)
            m = cells[lang][regime]["metrics"]["accuracy"]
            assert m["mean"] == pytest.approx(x.mean())
            assert m["std"] == pytest.approx(np.std(x.mean(axis=1), ddof=1))
            assert m["p_vs_original"] == pytest.approx(_ttest_by_hand(x.mean(0), orig.mean(0)))
            if regime == "adjusted_cont":
                adj = per_example("adjusted", lang, lang)
                assert m["p_vs_adjusted"] == pytest.approx(_ttest_by_hand(x.mean(0), adj.mean(0)))
            else:
                assert "p_vs_adjusted" not in m
            marks_seen[(lang, regime)] = ("*" if m["p_vs_original"] < 0.05 else "") + (
                "**" if m.get("p_vs_adjusted", 1) < 0.05 else "")
    # The marks in the hand-written table are those the p-values call for.
    assert marks_seen == {("es", "adjusted"): "*", ("es", "adjusted_cont"): "*",
                          ("ru", "adjusted"): "", ("ru", "adjusted_cont"): "***"}
    assert cells["ru"]["adjusted_cont"]["metrics"]["accuracy"]["marks"] == "*,**"
    assert cells["es"]["original"]["metrics"]["accuracy"]["marks"] == ""
    assert cells["en (es)"]["adjusted"]["seeds"] == [0, 1]
    assert report["settings"]["split"] == ["test"] and report["tasks"]["nli"]["split"] == "test"
    assert "Split test; mean over seeds (2 seeds)" in (out / "report.md").read_text()
    # Another split per task: no nli eval files here, so no nli table.
    assert build_report(str(results), ReportArguments(split=["test", "nli=eval"]))["tasks"] == {}
    with pytest.raises(ValueError, match="TASK=SPLIT"):
        ReportArguments(split=["pos=eval"])

    # Only seed 1: no standard deviation, t-tests on one seed's correctness.
    report = build_report(str(results), ReportArguments(seeds=[1]))
    es = next(c for c in report["tasks"]["nli"]["columns"] if c["label"] == "es")["cells"]
    assert es["adjusted"]["metrics"]["accuracy"]["std"] is None
    assert es["adjusted"]["metrics"]["accuracy"]["mean"] == pytest.approx(0.8)


def test_sets_of_a_language_folder():
    langs = ["es", "ru"]
    assert column_for("es", "es", langs).label == "es"
    assert column_for("mixed_es", "es", langs).label == "mixed_es"
    assert column_for("xquad_en-q_es-c", "es", langs).label == "xquad_en-q_es-c"
    assert column_for("ru", "es", langs) is None  # another language's file in a shared folder
    assert column_for("xquad_vi-q_en-c", "es", langs) is None  # vi is a language even without a vi folder
    assert column_for("en", "es", langs).label == "en (es)"
    assert column_for("xquad_en", "ru", langs).english


def _write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_refuses_files_with_different_examples(tmp_path, capsys):
    results = _results_from_fixtures(tmp_path)
    bad = results / "nli" / "adjusted" / "ru" / "seed1" / "predictions_test_ru.jsonl"
    lines = bad.read_text().splitlines()
    bad.write_text("\n".join(lines[:-1] + [lines[-1].replace('"ru-9"', '"ru-99"')]) + "\n")
    assert main([str(results)]) == 1
    err = capsys.readouterr().err
    assert str(bad) in err and "original" in err and "cannot be paired" in err
    with pytest.raises(InputError, match="differ"):
        build_report(str(results), ReportArguments())
    # A malformed line is named by file and line.
    bad.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(InputError, match=re.escape(f"{bad}:2: not a JSON object")):
        read_predictions(str(bad), "nli")
    bad.write_text(lines[0] + "\n" + lines[0] + "\n")
    with pytest.raises(InputError, match=re.escape(f"{bad}:2: duplicate id")):
        read_predictions(str(bad), "nli")


def test_qa_cells_both_metrics(tmp_path):
    rng = np.random.default_rng(0)
    n, results = 40, tmp_path / "r"
    truth = {}
    for regime, shift in (("original", 0.0), ("adjusted", 0.3), ("adjusted_cont", 0.31)):
        for seed in (0, 1, 2):
            f1 = np.clip(rng.random(n) * 0.6 + shift, 0, 1)
            em = f1 > 0.8
            truth[(regime, seed)] = (f1, em.astype(float))
            order = rng.permutation(n)  # files list questions in any order: pairing goes by id
            _write_jsonl(results / "qa" / regime / "es" / f"seed{seed}" / "predictions_test_xquad_es.jsonl",
                         [{"id": f"q{i}", "prediction": "x", "answers": ["x"], "f1": float(f1[i]), "em": bool(em[i])}
                          for i in order])
        # An unlabelled set (null scores) is left out, not scored as zero.
        _write_jsonl(results / "qa" / regime / "es" / "seed0" / "predictions_test_mlqa_es.jsonl",
                     [{"id": "u1", "prediction": "x", "answers": [], "f1": None, "em": None}])
    report = build_report(str(results), ReportArguments())
    table = report["tasks"]["qa"]
    assert table["header"] == ["model", "xquad_es"]
    cells = table["columns"][0]["cells"]
    for metric, k in (("f1", 0), ("em", 1)):
        mean = {r: np.mean([truth[(r, s)][k] for s in range(3)], axis=0) for r in ("original", "adjusted",
                                                                                     "adjusted_cont")}
        for regime in ("adjusted", "adjusted_cont"):
            m = cells[regime]["metrics"][metric]
            assert m["mean"] == pytest.approx(mean[regime].mean())
            assert m["p_vs_original"] == pytest.approx(stats.ttest_rel(mean[regime], mean["original"]).pvalue)
        assert cells["adjusted_cont"]["metrics"][metric]["p_vs_adjusted"] == pytest.approx(
            stats.ttest_rel(mean["adjusted_cont"], mean["adjusted"]).pvalue)
    f1, em = cells["adjusted"]["metrics"]["f1"], cells["adjusted"]["metrics"]["em"]
    assert table["rows"][1][1] == f"{100 * f1['mean']:.1f}{f1['marks']} / {100 * em['mean']:.1f}{em['marks']}"
    assert f1["marks"] == "*"
    # Scores outside [0, 1] are refused rather than rescaled by guess.
    bad = results / "qa" / "original" / "es" / "seed0" / "predictions_test_xquad_es.jsonl"
    _write_jsonl(bad, [{"id": "q0", "f1": 87.5, "em": True}])
    with pytest.raises(InputError, match=re.escape(f"{bad}:1: 'f1' and 'em' must be numbers in")):
        build_report(str(results), ReportArguments())


def test_xsr_best_layer_per_state(tmp_path):
    rng = np.random.default_rng(1)
    n, layers, results = 30, 4, tmp_path / "r"
    ranks = {}
    for regime, best in (("original", 1), ("adjusted", 3)):
        for seed in (0, 1):
            r = rng.integers(1, 50, size=(n, layers))
            r[:, best] = rng.integers(1, 4, size=n)  # this layer retrieves well
            ranks[(regime, seed)] = r
            _write_jsonl(results / "xsr" / regime / "vi" / f"seed{seed}" / "predictions_vi.jsonl",
                         [{"id": i, "ranks": r[i].tolist()} for i in range(n)])
    report = build_report(str(results), ReportArguments())
    table = report["tasks"]["xsr"]
    cells = table["columns"][0]["cells"]
    assert table["header"] == ["model", "vi"]
    assert cells["original"]["best_layer"] == 1 and cells["adjusted"]["best_layer"] == 3
    rr = {reg: np.mean([1.0 / ranks[(reg, s)][:, layer] for s in (0, 1)], axis=0)
          for reg, layer in (("original", 1), ("adjusted", 3))}
    m = cells["adjusted"]["metrics"]
    assert m["mrr"]["mean"] == pytest.approx(rr["adjusted"].mean())
    assert m["mrr"]["p_vs_original"] == pytest.approx(stats.ttest_rel(rr["adjusted"], rr["original"]).pvalue)
    assert m["acc1"]["mean"] == pytest.approx(np.mean([(ranks[("adjusted", s)][:, 3] == 1).mean() for s in (0, 1)]))
    assert cells["original"]["mrr_by_layer"] == pytest.approx(
        np.mean([(1.0 / ranks[("original", s)]).mean(0) for s in (0, 1)], axis=0).tolist())
    assert table["rows"][0][1].endswith("(L1)") and table["rows"][1][1].endswith("(L3)")


def test_task_variant_folders_are_tables_of_their_kind(tmp_path):
    """`xsr_nli` (retrieval with the NLI-fine-tuned models) is read as XSR and tabled beside `xsr`; a folder
    that is no task variant is ignored."""
    results = tmp_path / "r"
    for folder, rank in (("xsr", 2), ("xsr_nli", 4)):
        for regime in ("original", "adjusted"):
            _write_jsonl(results / folder / regime / "es" / "seed0" / "predictions_es.jsonl",
                         [{"id": i, "ranks": [rank, 1 if regime == "adjusted" else rank]} for i in range(5)])
    (results / "notes_nli").mkdir()
    (results / "nlix").mkdir()
    report = build_report(str(results), ReportArguments(split=["test", "xsr=test"]))
    assert list(report["tasks"]) == ["xsr", "xsr_nli"]
    assert report["tasks"]["xsr_nli"]["title"] == "XSR: MRR at the best layer (Lk) (xsr_nli)"
    by_folder = {t: report["tasks"][t]["columns"][0]["cells"]["original"]["metrics"]["mrr"]["mean"]
                 for t in ("xsr", "xsr_nli")}
    assert by_folder == {"xsr": pytest.approx(1 / 2), "xsr_nli": pytest.approx(1 / 4)}
    assert main([str(results), "--output_dir", str(tmp_path / "out")]) == 0
    for task in ("xsr", "xsr_nli"):  # the per-layer curves, one PNG per retrieval table
        assert (tmp_path / "out" / f"{task}_layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ReportArguments(split=["test", "ner=eval"]).split_of("ner_big") == "eval"
    with pytest.raises(ValueError, match="unknown task"):
        ReportArguments(tasks=["pos_nli"])


def _tags(rng, n_tokens):
    return rng.choice(["O", "O", "O", "B-PER", "I-PER", "B-LOC"], size=n_tokens).tolist()


def test_ner_permutation_test_over_all_seeds(tmp_path):
    rng = np.random.default_rng(2)
    results, sentences = tmp_path / "r", 12
    gold = [_tags(rng, int(rng.integers(2, 7))) for _ in range(sentences)]
    counts = {}
    for regime, noise in (("original", 0.6), ("adjusted", 0.2)):
        for seed in (0, 1):
            preds = [[t if rng.random() > noise else rng.choice(["O", "B-PER", "B-LOC"]) for t in g] for g in gold]
            counts[(regime, seed)] = np.array([token_counts(g, p) for g, p in zip(gold, preds)])
            _write_jsonl(results / "ner" / regime / "ru" / f"seed{seed}" / "predictions_test_ru.jsonl",
                         [{"id": i, "tokens": ["w"] * len(g), "gold": g, "pred": p}
                          for i, (g, p) in enumerate(zip(gold, preds))])
            # An unlabelled English set (null gold tags): left out, not scored.
            _write_jsonl(results / "ner" / regime / "ru" / f"seed{seed}" / "predictions_test_en.jsonl",
                         [{"id": 0, "tokens": ["w"], "gold": None, "pred": ["O"]}])
    report = build_report(str(results), ReportArguments(permutation_seed=3))
    assert report["tasks"]["ner"]["header"] == ["model", "ru"]
    cells = report["tasks"]["ner"]["columns"][0]["cells"]

    def f1(c):
        tp, fp, fn = c.sum(0)
        return 2 * tp / (2 * tp + fp + fn)

    for regime in ("original", "adjusted"):
        m = cells[regime]["metrics"]["f1"]
        assert m["mean"] == pytest.approx(np.mean([f1(counts[(regime, s)]) for s in (0, 1)]))
    a = np.concatenate([counts[("adjusted", s)] for s in (0, 1)])
    b = np.concatenate([counts[("original", s)] for s in (0, 1)])
    diff, p = permutation_test_f1(a, b, n_resamples=1000, seed=3)
    m = cells["adjusted"]["metrics"]["f1"]
    assert m["p_vs_original"] == p and m["pooled_f1_difference_vs_original"] == pytest.approx(f1(a) - f1(b))
    assert p < 0.05 and m["marks"] == "*"
    # Seeds are paired one to one: a seed missing from one regime is refused.
    shutil.rmtree(results / "ner" / "original" / "ru" / "seed1")
    with pytest.raises(InputError, match="pairs seed with seed"):
        build_report(str(results), ReportArguments())
    assert build_report(str(results), ReportArguments(seeds=[0]))["tasks"]["ner"]["columns"][0]["cells"]


def test_ner_entity_level_cell_and_p_value_from_seqeval(tmp_path):
    """`--ner_metric entity`: the cell is the mean over seeds of seqeval's f1_score, and the p-value that of
    an exact permutation test that swaps whole sentence predictions and re-scores with seqeval itself."""
    import itertools

    from seqeval.metrics import f1_score

    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "I-ORG"], ["B-LOC", "O"],
            ["O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC"]]
    # Original gets the words mostly right but the spans wrong (token F1 high, entity F1 low); Adjusted
    # gets whole entities right. 2 seeds x 4 sentences: 2**8 = 256 swap patterns, enumerated exactly.
    preds = {("original", 0): [["B-PER", "O", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O"], ["B-LOC", "O"],
                               ["O", "B-PER", "B-PER", "O", "B-LOC", "O"]],
             ("original", 1): [["B-PER", "I-PER", "I-PER", "B-LOC"], ["O", "B-ORG", "O", "I-ORG"], ["O", "O"],
                               ["O", "B-PER", "I-PER", "I-PER", "B-LOC", "B-LOC"]],
             ("adjusted", 0): [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "I-ORG"], ["B-LOC", "O"],
                               ["O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC"]],
             ("adjusted", 1): [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "I-ORG"], ["B-PER", "O"],
                               ["O", "B-PER", "I-PER", "O", "B-LOC", "I-LOC"]]}
    results = tmp_path / "r"
    for (regime, seed), pred in preds.items():
        _write_jsonl(results / "ner" / regime / "vi" / f"seed{seed}" / "predictions_test_vi.jsonl",
                     [{"id": i, "tokens": ["w"] * len(g), "gold": g, "pred": p}
                      for i, (g, p) in enumerate(zip(gold, pred))])
    out = tmp_path / "out"
    assert main([str(results), "--ner_metric", "entity", "--output_dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    ner = report["tasks"]["ner"]
    cells = ner["columns"][0]["cells"]

    mean_f1 = {r: np.mean([f1_score(gold, preds[(r, s)]) for s in (0, 1)]) for r in ("original", "adjusted")}
    assert mean_f1["original"] < 0.5 < 0.9 < mean_f1["adjusted"]
    # The exact test, by brute force with seqeval: pairs are (seed, sentence); a swap exchanges the two
    # systems' predictions of that sentence, and F1 is seqeval's over all 8 (gold, pred) sentences.
    golds = gold + gold
    a = preds[("adjusted", 0)] + preds[("adjusted", 1)]
    b = preds[("original", 0)] + preds[("original", 1)]
    observed = f1_score(golds, a) - f1_score(golds, b)
    hits = 0
    for swap in itertools.product((False, True), repeat=len(a)):
        xa = [q if s else p for p, q, s in zip(a, b, swap)]
        xb = [p if s else q for p, q, s in zip(a, b, swap)]
        hits += abs(f1_score(golds, xa) - f1_score(golds, xb)) >= abs(observed) - 1e-12
    want_p = hits / 2 ** len(a)
    m = cells["adjusted"]["metrics"]["f1"]
    assert m["mean"] == pytest.approx(mean_f1["adjusted"])
    assert cells["original"]["metrics"]["f1"]["mean"] == pytest.approx(mean_f1["original"])
    assert m["pooled_f1_difference_vs_original"] == pytest.approx(observed)
    assert m["p_vs_original"] == pytest.approx(want_p, abs=1e-12)
    assert want_p == pytest.approx(8 / 256) and m["marks"] == "*"  # 8 of the 256 swap patterns as extreme
    assert ner["rows"] == [["Original", f"{100 * mean_f1['original']:.1f}"],  # 23.1
                           ["Adjusted", f"{100 * mean_f1['adjusted']:.1f}*"]]  # 91.7*
    # The measure is named in the note, the title and the settings.
    assert ner["ner_metric"] == "entity" and "seqeval" in ner["measure"]
    assert "entity-level micro F1" in ner["note"] and ner["title"] == "NER: entity-level F1"
    assert report["settings"]["ner_metric"] == "entity" and "seqeval" in report["settings"]["ner_measure"]
    assert "entity-level micro F1" in (out / "report.md").read_text()
    # The default scores the same files at the token level: a different table, named so.
    token = build_report(str(results), ReportArguments())["tasks"]["ner"]
    assert token["ner_metric"] == "token" and "token-level micro F1" in token["note"]
    tp, fp, fn = np.sum([token_counts(g, p) for g, p in zip(gold, preds[("original", 0)])], axis=0)
    assert token["columns"][0]["cells"]["original"]["metrics"]["f1"]["per_seed"]["0"] == pytest.approx(
        2 * tp / (2 * tp + fp + fn))
    assert token["rows"][0][1] != ner["rows"][0][1]
    with pytest.raises(SystemExit):
        main([str(results), "--ner_metric", "span"])


def test_report_to_wandb_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    wandb.teardown()  # an earlier test's wandb session would keep its own WANDB_DIR
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    results = _results_from_fixtures(tmp_path)
    assert main([str(results), "--report_to", "wandb", "--output_dir", str(tmp_path / "t")]) == 0
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


# ----------------------------------------------------------------------------- Fig. 1 from a results folder
def test_distances_from_a_results_folder(tmp_path):
    import torch
    from transformers import AutoModel, BertForSequenceClassification

    from hf_xladjust.alignment.pairs import AlignedPair, write_aligned_pairs
    from hf_xladjust.evaluation.distances import main as distances_main

    original = build_tiny_model(tmp_path / "original")
    results = tmp_path / "results"

    def save(path, model, origin):
        model.save_pretrained(path)
        shutil.copy(Path(original) / "tokenizer.json", path)
        shutil.copy(Path(original) / "tokenizer_config.json", path)
        (Path(path) / "run_args.json").write_text(json.dumps({"model": {"model_name_or_path": origin}}))
        return str(path)

    torch.manual_seed(1)
    adjusted = AutoModel.from_pretrained(original)
    with torch.no_grad():
        for p in adjusted.parameters():
            p.add_(0.05 * torch.randn_like(p))
    adjusted_dir = save(results / "adjust" / "es" / "seed0", adjusted, original)
    shared = results / "shared-original-nli" / "seed0"
    save(shared, BertForSequenceClassification.from_pretrained(original, num_labels=3), original)
    (results / "nli" / "original").mkdir(parents=True)
    os.symlink(results / "shared-original-nli", results / "nli" / "original" / "es")
    save(results / "nli" / "adjusted" / "es" / "seed0",
         BertForSequenceClassification.from_pretrained(adjusted_dir, num_labels=3), adjusted_dir)

    pairs = [AlignedPair(s.split(), t.split(), [(i, i) for i in range(min(len(s.split()), len(t.split())))])
             for s, t in zip(fixture_lines("en"), fixture_lines("es"))]
    write_aligned_pairs(str(tmp_path / "pairs.jsonl"), pairs)
    common = ["--pairs", str(tmp_path / "pairs.jsonl"), "--max_sentences", "10", "--seed", "3", "--device", "cpu"]
    assert distances_main(["--results_dir", str(results), "--lang", "es", "--results_seed", "0",
                           "--output_dir", str(tmp_path / "fig1")] + common) == 0
    report = json.loads((tmp_path / "fig1" / "distances.json").read_text())
    paths = {name: m["path"] for name, m in report["models"].items()}
    assert paths == {"original": original, "adjusted": adjusted_dir,
                     "original+nli": str(results / "nli" / "original" / "es" / "seed0"),
                     "adjusted+nli": str(results / "nli" / "adjusted" / "es" / "seed0")}
    assert (tmp_path / "fig1" / "distances.png").stat().st_size > 0
    # The same numbers as naming the folders by hand; the task models measure their own encoders.
    assert distances_main([a for name, path in paths.items() for a in ("--model", f"{name}={path}")]
                          + ["--output_dir", str(tmp_path / "by_hand")] + common) == 0
    by_hand = json.loads((tmp_path / "by_hand" / "distances.json").read_text())["models"]
    for name in paths:
        assert report["models"][name]["related_mean"] == by_hand[name]["related_mean"]
    assert report["models"]["adjusted"]["related_mean"] != report["models"]["original"]["related_mean"]
    assert report["models"]["original+nli"]["related_mean"] == pytest.approx(
        report["models"]["original"]["related_mean"])  # fine-tuning never ran: the same encoder weights
    # A missing language is an error naming the folder.
    assert distances_main(["--results_dir", str(results), "--lang", "hi", "--results_seed", "0",
                           "--output_dir", str(tmp_path / "none")] + common) == 1


def test_orig_cont_row_and_argument_checks(tmp_path, capsys):
    rng = np.random.default_rng(3)
    results, n = tmp_path / "r", 50
    rates = {"original": 0.5, "adjusted": 0.9, "adjusted_cont": 0.9, "original_cont": 0.5}
    for regime, rate in rates.items():
        for seed in (0, 1):
            c = rng.random(n) < rate
            _write_jsonl(results / "nli" / regime / "hi" / f"seed{seed}" / "predictions_test_hi.jsonl",
                         [{"id": i, "correct": bool(c[i])} for i in range(n)])
    report = build_report(str(results), ReportArguments())
    table = report["tasks"]["nli"]
    assert [row[0] for row in table["rows"]] == ["Original", "Adjusted", "Adj + cont", "Orig + cont"]
    cells = table["columns"][0]["cells"]
    m = cells["original_cont"]["metrics"]["accuracy"]
    assert m["p_vs_original"] > 0.05 and m["p_vs_adjusted"] < 0.05 and m["marks"] == "**"
    assert table["rows"][3][1] == f"{100 * m['mean']:.1f}**"
    assert "p_vs_original" not in cells["original"]["metrics"]["accuracy"]
    # Bad arguments stop before reading anything.
    with pytest.raises(SystemExit):
        main([str(results), "--tasks", "pos"])
    assert "unknown task" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 1
    assert "not a folder" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the regimes of issue 12
NEW_ROWS = [("original", "Original"), ("adjusted", "Adjusted"), ("adjusted_n5000", "Adjusted (5000 sent.)"),
            ("adjusted_n10000", "Adjusted (10000 sent.)"), ("adjusted_multi", "Adjusted (multi)"),
            ("adjusted_cont", "Adj + cont"), ("original_cont", "Orig + cont"), ("rotation", "Rotation"),
            ("normalized", "Normalized")]


def test_new_regime_rows_labels_marks_and_p_values(tmp_path):
    """Every regime in the contract's row order, from prediction files laid out as the grid writes them:
    Original and Adjusted (multi) once per seed in `all/` with per-language links, the others per language.
    Means, p-values (scipy.stats.ttest_rel on per-example correctness averaged over seeds) and marks are
    recomputed here from the drawn correctness."""
    rng = np.random.default_rng(12)
    results, n, seeds = tmp_path / "r", 80, (0, 1, 2)
    rates = {"original": 0.45, "adjusted": 0.8, "adjusted_n5000": 0.55, "adjusted_n10000": 0.7,
             "adjusted_multi": 0.78, "adjusted_cont": 0.85, "original_cont": 0.5, "rotation": 0.62,
             "normalized": 0.47}
    correct = {}  # (regime, set, seed) -> correctness of examples 0..n-1
    for regime in reversed(list(rates)):  # folder creation order does not decide the row order
        shared = regime in ("original", "adjusted_multi")
        for seed in seeds:
            for set_name in ("es", "ru", "en") if shared else ("es", "ru"):
                c = rng.random(n) < (rates[regime] + (0.1 if set_name == "en" else 0.0))
                correct[(regime, set_name, seed)] = c.astype(float)
                folder = results / "nli" / regime / ("all" if shared else set_name) / f"seed{seed}"
                order = rng.permutation(n)
                _write_jsonl(folder / f"predictions_test_{set_name}.jsonl",
                             [{"id": f"{set_name}-{i}", "correct": bool(c[i])} for i in order])
            if shared:
                for lang in ("es", "ru"):
                    (results / "nli" / regime / lang).mkdir(parents=True, exist_ok=True)
                    os.symlink(results / "nli" / regime / "all" / f"seed{seed}",
                               results / "nli" / regime / lang / f"seed{seed}", target_is_directory=True)
    out = tmp_path / "out"
    assert main([str(results), "--output_dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    table = report["tasks"]["nli"]
    assert [row[0] for row in table["rows"]] == [label for _, label in NEW_ROWS]
    assert table["regimes"] == dict(NEW_ROWS)
    assert table["header"] == ["model", "en (es)", "en (ru)", "es", "ru"]

    def mean_over_seeds(regime, set_name):
        return np.mean([correct[(regime, set_name, s)] for s in seeds], axis=0)

    columns = {c["label"]: c["cells"] for c in table["columns"]}
    p_rows = {label: ["-"] * 4 for regime, label in NEW_ROWS if regime != "original"}
    seen_marks = set()
    for j, (col, set_name) in enumerate((("en (es)", "en"), ("en (ru)", "en"), ("es", "es"), ("ru", "ru"))):
        orig = mean_over_seeds("original", set_name)
        for k, (regime, label) in enumerate(NEW_ROWS):
            shown = table["rows"][k][j + 1]
            if (regime, set_name, 0) not in correct:  # only the shared folders have English files
                assert regime not in columns[col] and shown == "-"
                continue
            x = mean_over_seeds(regime, set_name)
            m = columns[col][regime]["metrics"]["accuracy"]
            assert m["mean"] == pytest.approx(x.mean())
            marks = ""
            if regime != "original":
                p_orig = stats.ttest_rel(x, orig).pvalue
                assert m["p_vs_original"] == pytest.approx(p_orig)
                marks = "*" if p_orig < 0.05 else ""
                p_text = f"{p_orig:.3g}"
                if regime != "adjusted":
                    if set_name == "en":  # no Adjusted cell in the English columns: no ** test
                        assert "p_vs_adjusted" not in m
                        p_text += " / -"
                    else:
                        p_adj = stats.ttest_rel(x, mean_over_seeds("adjusted", set_name)).pvalue
                        assert m["p_vs_adjusted"] == pytest.approx(p_adj)
                        marks = ",".join(filter(None, [marks, "**" if p_adj < 0.05 else ""]))
                        p_text += f" / {p_adj:.3g}"
                p_rows[label][j] = p_text
            assert m["marks"] == marks
            seen_marks.add(marks)
            assert shown == f"{100 * x.mean():.1f}{marks}"
    assert seen_marks == {"", "*", "**", "*,**"}  # the draw exercises every mark
    # the shared folders are read through their links: the multi run's English and per-language files
    assert columns["en (ru)"]["adjusted_multi"]["metrics"]["accuracy"]["mean"] == pytest.approx(
        mean_over_seeds("adjusted_multi", "en").mean())
    assert columns["ru"]["adjusted_multi"]["files"][0] == str(
        results / "nli" / "adjusted_multi" / "ru" / "seed0" / "predictions_test_ru.jsonl")
    assert set(columns["en (es)"]) == {"original", "adjusted_multi"}
    # the p-values behind the marks, listed under the table in report.md
    md = (out / "report.md").read_text()
    for label, cells in p_rows.items():
        assert f"| {label} | {' | '.join(cells)} |\n" in md
    assert md.index("| Adjusted (5000 sent.) |") < md.index("| Adjusted (10000 sent.) |") < md.index("| Rotation |")
    (results / "nli" / "adjusted_n0").mkdir()  # not a regime: warned about and skipped
    assert [row[0] for row in build_report(str(results), ReportArguments())["tasks"]["nli"]["rows"]] == [
        label for _, label in NEW_ROWS]
