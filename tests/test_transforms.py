"""Representation transforms (rotation, Zhao et al. normalisation): the fit against independent numpy/scipy
computations on a tiny model, the CLI's files, and their application in run_xsr.py, run_glue_xl.py and
run_ner_xl.py against hand computations."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, fixture_lines
from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

from hf_xladjust.alignment.pairs import AlignedPair, AlignedPairCollator, AlignedPairDataset
from hf_xladjust.errors import InputError
from hf_xladjust.evaluation.transforms import (
    FILE_NAME,
    SUMMARY_NAME,
    LastLayerTransform,
    PairStatistics,
    RepresentationTransform,
    TransformMaskCollator,
    fit_transform,
    linked_word_vectors,
    procrustes,
    segment_masks,
)

ROOT = Path(__file__).resolve().parents[1]
COMMON_FLAGS = ("--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--save_strategy", "no")


def random_orthogonal(n, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return q * np.sign(np.diag(r))


def diagonal_pharaoh(path, lang="es"):
    lines = [" ".join(f"{k}-{k}" for k in range(min(len(a.split()), len(b.split()))))
             for a, b in zip(fixture_lines("en"), fixture_lines(lang))]
    path.write_text("\n".join(lines) + "\n")
    return path


def reference_pairs(lang="es"):
    """The pairs the CLI keeps from the diagonal alignment, built plainly: link k-k, identical words dropped."""
    pairs = []
    for a, b in zip(fixture_lines("en"), fixture_lines(lang)):
        src, tgt = a.split(), b.split()
        pairs.append(AlignedPair(src, tgt, [(k, k) for k in range(min(len(src), len(tgt))) if src[k] != tgt[k]]))
    return pairs


def loop_word_vectors(model, tokenizer, words):
    """Per word: mean of its subword vectors at every hidden state (L+1, H), one sentence, plain loops;
    plus the [CLS] and [SEP] vectors."""
    enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states
    ids = enc.word_ids()
    vecs = {}
    for k in range(len(words)):
        positions = [i for i, w in enumerate(ids) if w == k]
        vecs[k] = np.stack([h[0, positions].double().mean(0).numpy() for h in hidden])
    cls = np.stack([h[0, 0].double().numpy() for h in hidden])
    sep = np.stack([h[0, len(ids) - 1].double().numpy() for h in hidden])
    return vecs, cls, sep


def loop_linked_vectors(model, tokenizer, pairs, special=True):
    """(English, target) (links, L+1, H) float64 for every link, then CLS<->CLS and SEP<->SEP of each pair."""
    xs, ys = [], []
    for p in pairs:
        (sv, scls, ssep), (tv, tcls, tsep) = (loop_word_vectors(model, tokenizer, w) for w in (p.src, p.tgt))
        xs += [sv[i] for i, _ in p.links] + ([scls, ssep] if special else [])
        ys += [tv[j] for _, j in p.links] + ([tcls, tsep] if special else [])
    return np.stack(xs), np.stack(ys)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModel.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def run_cli(monkeypatch, *args):
    from hf_xladjust.evaluation import transforms

    monkeypatch.setattr(sys, "argv", ["transforms.py", *map(str, args)])
    transforms.main()


def fit_cli(monkeypatch, tmp_path, model_dir, kind, lang="es"):
    out = tmp_path / f"{kind}-{lang}"
    run_cli(monkeypatch, "--kind", kind, "--model_name_or_path", model_dir, "--source_file", FIXTURES / "en.txt",
            "--target_file", FIXTURES / f"{lang}.txt", "--target_lang", lang, "--aligner", "pharaoh",
            "--alignment_file", diagonal_pharaoh(tmp_path / f"al-{lang}.txt", lang), "--per_device_batch_size", 5,
            "--output_dir", out)
    return out


@pytest.fixture(scope="module")
def fitted(tiny_model_dir, tmp_path_factory):
    """rotation and normalize for es, fitted by the CLI on the fixture corpus."""
    mp = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("fitted")
    try:
        return {kind: fit_cli(mp, folder, tiny_model_dir, kind) for kind in ("rotation", "normalize")}
    finally:
        mp.undo()


# --- the fit ------------------------------------------------------------------------------------------

def test_procrustes_is_orthogonal_and_the_svd_solution():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 6)), rng.standard_normal((50, 6))
    w = procrustes(torch.from_numpy(x.T @ y)).numpy()
    np.testing.assert_allclose(w @ w.T, np.eye(6), atol=1e-10)
    try:
        from scipy.linalg import orthogonal_procrustes

        expected = orthogonal_procrustes(x, y)[0]
    except ImportError:  # the SVD solution written out
        u, _, vt = np.linalg.svd(x.T @ y)
        expected = u @ vt
    np.testing.assert_allclose(w, expected, atol=1e-10)
    # and it is the minimum: no other orthogonal matrix does better
    best = np.linalg.norm(x @ w - y)
    assert all(best <= np.linalg.norm(x @ random_orthogonal(6, s) - y) for s in range(20))


def test_rotation_recovers_a_known_rotation_per_layer():
    rng = np.random.default_rng(1)
    layers, hidden = 3, 8
    rotations = np.stack([random_orthogonal(hidden, 10 + k) for k in range(layers)])
    target = rng.standard_normal((40, layers, hidden))
    english = np.einsum("nlh,lhk->nlk", target, rotations)  # English = target rotated, exactly
    stats = PairStatistics(layers, hidden, cross=True, device="cpu")
    for chunk in np.array_split(np.arange(40), 3):  # accumulated over batches
        stats.add(torch.from_numpy(target[chunk]), torch.from_numpy(english[chunk]))
    languages, residuals = fit_transform(stats, "rotation", "xx")
    np.testing.assert_allclose(languages["xx"]["rotation"].numpy(), rotations, atol=1e-5)
    assert max(residuals["residual_after"]) < 1e-6 < min(residuals["residual_before"])
    before = ((target - english) ** 2).sum(-1).mean(0)
    np.testing.assert_allclose(residuals["residual_before"], before, rtol=1e-5)


def test_normalize_residuals_equal_a_direct_computation():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((30, 2, 5)) * 3 + 1
    y = rng.standard_normal((30, 2, 5)) * 0.5 - 2
    stats = PairStatistics(2, 5, cross=False, device="cpu")
    stats.add(torch.from_numpy(x), torch.from_numpy(y))
    languages, residuals = fit_transform(stats, "normalize", "xx")
    mapped = (x - x.mean(0)) / x.std(0) * y.std(0) + y.mean(0)
    np.testing.assert_allclose(residuals["residual_after"], ((mapped - y) ** 2).sum(-1).mean(0), rtol=1e-5)
    zx, zy = (x - x.mean(0)) / x.std(0), (y - y.mean(0)) / y.std(0)
    np.testing.assert_allclose(residuals["residual_standardized"], ((zx - zy) ** 2).sum(-1).mean(0), rtol=1e-5)


def test_gathered_word_vectors_equal_a_per_word_loop(tiny):
    model, tokenizer = tiny
    pairs = reference_pairs()[:5]
    dataset = AlignedPairDataset(pairs, tokenizer, 64, link_special_tokens=True)
    batch = AlignedPairCollator(tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        en, tgt = linked_word_vectors(model, batch)
    ref_en, ref_tgt = loop_linked_vectors(model, tokenizer, pairs)
    # the dataset orders each pair's word links first, then CLS and SEP: the reference's order
    assert en.shape == ref_en.shape == (sum(len(p.links) + 2 for p in pairs), 3, 32)
    np.testing.assert_allclose(en.numpy(), ref_en, atol=1e-5)
    np.testing.assert_allclose(tgt.numpy(), ref_tgt, atol=1e-5)


def test_cli_writes_the_files_and_the_fit_equals_numpy(fitted, tiny):
    model, tokenizer = tiny
    ref_en, ref_tgt = loop_linked_vectors(model, tokenizer, reference_pairs())
    for kind, out in fitted.items():
        assert {FILE_NAME, SUMMARY_NAME, "run_args.json"} <= {p.name for p in out.iterdir()}
        raw = torch.load(out / FILE_NAME, weights_only=True)
        assert (raw["kind"], raw["reference_lang"], raw["num_layers"], raw["hidden_size"]) == (kind, "en", 2, 32)
        summary = json.loads((out / SUMMARY_NAME).read_text())
        assert summary["linked_words"] == len(ref_en) and summary["sentence_pairs"] == 12
        assert len(summary["residual_before"]) == len(summary["residual_after"]) == 3
        run_args = json.loads((out / "run_args.json").read_text())
        assert run_args["transform"]["kind"] == kind and run_args["alignment"]["target_lang"] == "es"
    norm = torch.load(fitted["normalize"] / FILE_NAME, weights_only=True)["languages"]
    assert set(norm) == {"en", "es"}
    for lang, vecs in (("en", ref_en), ("es", ref_tgt)):
        np.testing.assert_allclose(norm[lang]["mean"].numpy(), vecs.mean(0), atol=1e-5)
        np.testing.assert_allclose(norm[lang]["std"].numpy(), vecs.std(0), atol=1e-5)
    rot = torch.load(fitted["rotation"] / FILE_NAME, weights_only=True)["languages"]
    assert set(rot) == {"es"}
    # A LayerNorm output with bias 0 (this random model) lies in the hyperplane sum(x) = 0: X_t^T X_en has rank
    # H - 1 and W is free along the one direction no vector has. Compared where it is determined: on the vectors.
    for layer in range(3):
        x = ref_tgt[:, layer]
        u, _, vt = np.linalg.svd(x.T @ ref_en[:, layer])
        w = rot["es"]["rotation"][layer].double().numpy()
        np.testing.assert_allclose(w @ w.T, np.eye(32), atol=1e-5)
        np.testing.assert_allclose(x @ w, x @ (u @ vt), atol=1e-4)
    # the residual after the rotation is the direct one
    w = rot["es"]["rotation"].double().numpy()
    direct = ((np.einsum("nlh,lhk->nlk", ref_tgt, w) - ref_en) ** 2).sum(-1).mean(0)
    summary = json.loads((fitted["rotation"] / SUMMARY_NAME).read_text())
    np.testing.assert_allclose(summary["residual_after"], direct, rtol=1e-4)


def test_cli_refuses_parallel_and_a_finished_run(tmp_path, tiny_model_dir, fitted, monkeypatch):
    al = diagonal_pharaoh(tmp_path / "al.txt")
    with pytest.raises(InputError, match="not --parallel"):
        run_cli(monkeypatch, "--kind", "rotation", "--model_name_or_path", tiny_model_dir, "--parallel",
                f"es={FIXTURES / 'en.txt'},{FIXTURES / 'es.txt'}", "--aligner", "pharaoh", "--alignment_files",
                f"es={al}", "--output_dir", tmp_path / "o")
    with pytest.raises(InputError, match="holds a finished run"):
        run_cli(monkeypatch, "--kind", "rotation", "--model_name_or_path", tiny_model_dir, "--source_file",
                FIXTURES / "en.txt", "--target_file", FIXTURES / "es.txt", "--target_lang", "es", "--aligner",
                "pharaoh", "--alignment_file", al, "--output_dir", fitted["rotation"])
    with pytest.raises(InputError, match="--target_lang xx"):
        run_cli(monkeypatch, "--kind", "normalize", "--model_name_or_path", tiny_model_dir, "--source_file",
                FIXTURES / "en.txt", "--target_file", FIXTURES / "es.txt", "--aligner", "pharaoh",
                "--alignment_file", al, "--output_dir", tmp_path / "o2")
    with pytest.raises(SystemExit):  # argparse's choices
        run_cli(monkeypatch, "--kind", "mirror", "--model_name_or_path", tiny_model_dir, "--train_file", al,
                "--output_dir", tmp_path / "o3")
    # as a command: one line, exit status 1
    proc = subprocess.run([sys.executable, "-m", "hf_xladjust.evaluation.transforms", "--kind", "rotation",
                           "--model_name_or_path", tiny_model_dir, "--parallel", f"es={al}", "--aligner", "pharaoh",
                           "--alignment_files", f"es={al}", "--output_dir", str(tmp_path / "o4")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith(
        "transforms.py: error: fits one target language per run")


def test_load_errors_name_the_file(tmp_path, fitted):
    with pytest.raises(InputError, match="no such file") as err:
        RepresentationTransform.load(str(tmp_path / "nowhere"))
    assert err.value.path.endswith("nowhere")
    with pytest.raises(InputError, match="no such file"):
        RepresentationTransform.load(str(tmp_path))  # a folder without the file
    bad = tmp_path / "bad.pt"
    torch.save({"weights": torch.zeros(2)}, bad)
    with pytest.raises(InputError, match="not a representation transform") as err:
        RepresentationTransform.load(str(bad))
    assert err.value.path == str(bad)
    transform = RepresentationTransform.load(str(fitted["rotation"]))  # the folder works
    assert transform.path == str(fitted["rotation"] / FILE_NAME)
    transform.require(["en", "es"])
    with pytest.raises(InputError, match="no rotation for language\\(s\\) ru") as err:
        transform.require(["en", "es", "ru"])
    assert err.value.path == transform.path


# --- run_xsr.py ---------------------------------------------------------------------------------------

def test_run_xsr_rotates_the_target_side_only(tmp_path, tiny_model_dir, tiny, fitted, monkeypatch):
    import hf_xladjust.evaluation.retrieval as retrieval
    import run_xsr

    model, tokenizer = tiny
    seen = []
    original = retrieval.rank_candidates

    def recording(queries, candidates, *args, **kwargs):
        seen.append((queries.clone(), candidates.clone()))
        return original(queries, candidates, *args, **kwargs)

    monkeypatch.setattr(retrieval, "rank_candidates", recording)
    es, en = tmp_path / "es.txt", tmp_path / "en.txt"
    es.write_text("\n".join(fixture_lines("es")[:6]) + "\n")
    en.write_text("\n".join(fixture_lines("en")[:6]) + "\n")
    out = tmp_path / "xsr"
    monkeypatch.setattr(sys, "argv", ["run_xsr.py", "--model_name_or_path", tiny_model_dir, "--source_file", str(es),
                                      "--target_file", str(en), "--source_lang", "es", "--output_dir", str(out),
                                      "--representation_transform", str(fitted["rotation"])])
    run_xsr.main()
    (queries, candidates), = seen

    def mean_pooled(lines):  # every layer, mean over all tokens, one sentence at a time
        rows = []
        for line in lines:
            with torch.no_grad():
                hidden = model(**tokenizer(line, return_tensors="pt"), output_hidden_states=True).hidden_states
            rows.append(torch.stack([h[0].mean(0) for h in hidden]))
        return torch.stack(rows, dim=1)  # (layers, N, H)

    w = torch.load(fitted["rotation"] / FILE_NAME, weights_only=True)["languages"]["es"]["rotation"]
    expected = torch.stack([mean_pooled(fixture_lines("es")[:6])[k] @ w[k] for k in range(3)])
    torch.testing.assert_close(queries, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(candidates, mean_pooled(fixture_lines("en")[:6]), atol=1e-5, rtol=1e-5)
    record = json.loads((out / "run_args.json").read_text())["representation_transform"]
    assert record["kind"] == "rotation" and record["applied_to"] == ["es"] and record["path"].endswith(FILE_NAME)

    # normalize standardises both sides with their own statistics
    seen.clear()
    monkeypatch.setattr(sys, "argv", ["run_xsr.py", "--model_name_or_path", tiny_model_dir, "--source_file", str(es),
                                      "--target_file", str(en), "--source_lang", "es", "--output_dir",
                                      str(tmp_path / "xsr-n"), "--representation_transform",
                                      str(fitted["normalize"] / FILE_NAME)])
    run_xsr.main()
    (queries, candidates), = seen
    stats = torch.load(fitted["normalize"] / FILE_NAME, weights_only=True)["languages"]
    for got, lang in ((queries, "es"), (candidates, "en")):
        raw = mean_pooled(fixture_lines(lang)[:6])
        mean, std = stats[lang]["mean"][:, None], stats[lang]["std"][:, None]
        torch.testing.assert_close(got, (raw - mean) / std, atol=1e-4, rtol=1e-4)


def test_run_xsr_missing_language_is_one_line(tmp_path, tiny_model_dir, fitted, monkeypatch):
    import run_xsr

    folder = tmp_path / "tatoeba"
    folder.mkdir()
    for lang, code in (("es", "spa"), ("ru", "rus")):
        (folder / f"tatoeba.{code}-eng.{code}").write_text("\n".join(fixture_lines(lang)[:4]) + "\n")
        (folder / f"tatoeba.{code}-eng.eng").write_text("\n".join(fixture_lines("en")[:4]) + "\n")
    monkeypatch.setattr(sys, "argv", ["run_xsr.py", "--model_name_or_path", tiny_model_dir, "--tatoeba_dir",
                                      str(folder), "--languages", "es", "ru", "--output_dir", str(tmp_path / "o"),
                                      "--representation_transform", str(fitted["rotation"])])
    with pytest.raises(SystemExit) as err:
        run_xsr.run_main(run_xsr.main)
    path = fitted["rotation"] / FILE_NAME
    assert err.value.code.startswith(f"run_xsr.py: error: {path}: no rotation for language(s) ru")
    monkeypatch.setattr(sys, "argv", sys.argv[:-1] + [str(tmp_path / "missing.pt")])
    with pytest.raises(SystemExit) as err:
        run_xsr.run_main(run_xsr.main)
    assert err.value.code.startswith(f"run_xsr.py: error: {tmp_path / 'missing.pt'}: no such file")


# --- heads (run_glue_xl.py / run_ner_xl.py) ----------------------------------------------------------

def synthetic_transform(kind, hidden=32, layers=2):
    gen = torch.Generator().manual_seed(3)
    if kind == "rotation":
        w = torch.stack([torch.from_numpy(random_orthogonal(hidden, 20 + k)).float() for k in range(layers + 1)])
        languages = {"es": {"rotation": w}}
    else:
        languages = {lang: {"mean": torch.randn(layers + 1, hidden, generator=gen),
                            "std": torch.rand(layers + 1, hidden, generator=gen) + 0.5} for lang in ("en", "es")}
    return RepresentationTransform(kind, layers, hidden, languages, path="synthetic.pt")


@pytest.mark.parametrize("kind", ["rotation", "normalize"])
def test_sequence_classifier_logits_equal_the_head_on_the_transformed_state(tiny_model_dir, kind):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    enc = tokenizer(fixture_lines("es")[:3], fixture_lines("es")[3:6], padding=True, return_tensors="pt")
    transform = synthetic_transform(kind)
    with torch.no_grad():
        plain = model(**enc).logits
        h = model.bert(**enc).last_hidden_state
        if kind == "rotation":
            h2 = h @ transform.languages["es"]["rotation"][2]
        else:
            es, en = transform.languages["es"], transform.languages["en"]
            h2 = (h - es["mean"][2]) / es["std"][2] * en["std"][2] + en["mean"][2]
        expected = model.classifier(model.bert.pooler(h2))
        hook = LastLayerTransform(model, transform)
        with hook.language("es"):
            got = model(**enc).logits
        counted = hook.transformed_tokens
        with hook.language("en"):
            english = model(**enc).logits
        after = model(**enc).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, plain)
    torch.testing.assert_close(english, plain)  # English untouched, and nothing outside the block
    torch.testing.assert_close(after, plain)
    assert counted == int(enc["attention_mask"].sum()) and hook.transformed_tokens == 0


def test_a_token_mask_transforms_only_its_tokens(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=5).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    premises, hypotheses = fixture_lines("en")[:3], fixture_lines("es")[:3]
    enc = tokenizer(premises, hypotheses, padding=True, return_tensors="pt")
    # the hypothesis (segment 1) is Spanish: by token_type_ids, without the special tokens
    special = torch.tensor([tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
                            for ids in enc["input_ids"].tolist()]).bool()
    mask = (enc["token_type_ids"] == 1) & ~special & enc["attention_mask"].bool()
    unpadded = tokenizer(premises, hypotheses)
    got_masks = segment_masks(unpadded, [1, 1, 1])
    padded = TransformMaskCollator(lambda f: tokenizer.pad(f, return_tensors="pt"))(
        [{**{k: unpadded[k][i] for k in unpadded}, "transform_mask": got_masks[i]} for i in range(3)])
    assert torch.equal(padded["transform_mask"].bool(), mask)
    first = unpadded["token_type_ids"][0]
    assert segment_masks(unpadded, [0])[0] == [int(t == 0 and not s) for t, s in zip(first, special[0][:len(first)])]
    transform = synthetic_transform("rotation")
    with torch.no_grad():
        h = model.bert(**enc).last_hidden_state
        h2 = torch.where(mask[..., None], h @ transform.languages["es"]["rotation"][2], h)
        expected = model.classifier(h2)
        hook = LastLayerTransform(model, transform)
        with hook.language("es"):
            got = model(**padded).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert hook.transformed_tokens == int(mask.sum())


def test_a_transform_for_another_model_is_refused(tiny_model_dir):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3)
    with pytest.raises(InputError, match="fitted on a model with 4 layers of size 32"):
        LastLayerTransform(model, synthetic_transform("rotation", layers=4))


def xnli_files(folder, langs=("en", "es"), n=6):
    folder.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        lines = fixture_lines(lang)
        rows = [f"{lines[i]}\t{lines[(i * 5 + 1) % 12]}\t{('entailment', 'neutral', 'contradiction')[i % 3]}\n"
                for i in range(n)]
        (folder / f"test-{lang}.tsv").write_text("".join(rows), encoding="utf-8")
    return str(folder / "test-{lang}.tsv")


def test_run_glue_xl_records_the_transform_and_masks_mixed_sets(tmp_path, tiny_model_dir, fitted, monkeypatch):
    import run_glue_xl

    pattern = xnli_files(tmp_path / "xnli")
    out = tmp_path / "glue"
    monkeypatch.setattr(sys, "argv", ["run_glue_xl.py", "--model_name_or_path", tiny_model_dir, "--test_file_pattern",
                                      pattern, "--eval_languages", "es", "--mixed_language_eval", "--do_predict",
                                      "--output_dir", str(out), "--representation_transform",
                                      str(fitted["rotation"]), *COMMON_FLAGS])
    run_glue_xl.main()
    results = json.loads((out / "all_results.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    es = [line.split("\t") for line in Path(pattern.format(lang="es")).read_text().splitlines()]
    en = [line.split("\t") for line in Path(pattern.format(lang="en")).read_text().splitlines()]
    assert results["test_es_transformed_tokens"] == sum(len(tokenizer(p, h)["input_ids"]) for p, h, _ in es)
    # mixed: only the Spanish half's own tokens (no [CLS]/[SEP]) count
    sides = [json.loads(x)["english_side"] for x in (out / "predictions_test_mixed_es.jsonl").read_text().splitlines()]
    spanish = sum(len(tokenizer(es[i][1] if side == "premise" else es[i][0], add_special_tokens=False)["input_ids"])
                  for i, side in enumerate(sides))
    assert results["test_mixed_es_transformed_tokens"] == spanish
    assert "test_en_transformed_tokens" not in results and len(en) == 6
    record = json.loads((out / "run_args.json").read_text())["representation_transform"]
    assert record["kind"] == "rotation" and record["applied_to"] == ["es"]

    # a language missing from the file stops the run before anything is predicted
    pattern = xnli_files(tmp_path / "xnli2", ("en", "es", "ru"))
    monkeypatch.setattr(sys, "argv", ["run_glue_xl.py", "--model_name_or_path", tiny_model_dir, "--test_file_pattern",
                                      pattern, "--eval_languages", "es", "ru", "--do_predict", "--output_dir",
                                      str(tmp_path / "g2"), "--representation_transform", str(fitted["normalize"]),
                                      *COMMON_FLAGS])
    with pytest.raises(SystemExit) as err:
        run_glue_xl.run_main(run_glue_xl.main)
    assert err.value.code.startswith(f"run_glue_xl.py: error: {fitted['normalize'] / FILE_NAME}: no normalize for "
                                     "language(s) ru")


def test_run_ner_xl_transforms_the_target_sets(tmp_path, tiny_model_dir, fitted, monkeypatch):
    import run_ner_xl

    out = tmp_path / "ner"
    monkeypatch.setattr(sys, "argv", ["run_ner_xl.py", "--model_name_or_path", tiny_model_dir,
                                      "--validation_file_pattern", str(FIXTURES / "ner" / "dev-{lang}.tsv"),
                                      "--eval_languages", "es", "--do_eval", "--output_dir", str(out),
                                      "--representation_transform", str(fitted["normalize"]), *COMMON_FLAGS])
    run_ner_xl.main()
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_es_transformed_tokens"] > 0 and "eval_en_transformed_tokens" not in results
    record = json.loads((out / "run_args.json").read_text())["representation_transform"]
    assert record["kind"] == "normalize" and record["applied_to"] == ["es"]
