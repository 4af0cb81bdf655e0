"""XNLI data (XTREME tsv reader, mixed-language sets, labels, predictions) and run_glue_xl.py end to end."""
import json
import runpy
import sys
from pathlib import Path

import datasets
import pytest
from conftest import fixture_lines
from hub_repos import nli_split, write_repo
from transformers import AutoConfig, BertConfig

from hf_xladjust.errors import InputError
from hf_xladjust.tasks.xnli import (
    LABELS,
    MIXED_LANGUAGE_SEED,
    MixedNLIExample,
    NLIExample,
    accuracy,
    build_mixed_language,
    examples_from_hub,
    model_label_ids,
    read_xnli_tsv,
    write_predictions,
)

ROOT = Path(__file__).resolve().parents[1]
COMMON_FLAGS = ("--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--save_strategy", "no",
                "--logging_steps", "1")


def write_tsv(path, rows):
    path.write_text("".join("\t".join(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def parallel_tsvs(folder, langs=("en", "es", "ru"), n=12, prefix="test"):
    """Line-parallel `{prefix}-{lang}.tsv` files built from the fixture sentences; returns the pattern."""
    folder.mkdir(parents=True, exist_ok=True)
    for lang in langs:
        lines = fixture_lines(lang)
        rows = [(lines[i % len(lines)], lines[(i * 5 + 1) % len(lines)], LABELS[i % 3]) for i in range(n)]
        write_tsv(folder / f"{prefix}-{lang}.tsv", rows)
    return str(folder / (prefix + "-{lang}.tsv"))


def synthetic(lang, n, labels=None):
    return [NLIExample(i, f"{lang} premise {i}", f"{lang} hypothesis {i}", labels[i] if labels else i % 3, i + 1)
            for i in range(n)]


# --- the tsv reader -------------------------------------------------------------------------------

def test_read_xnli_tsv(tmp_path):
    path = write_tsv(tmp_path / "a.tsv", [("premise", "hypothesis", "label"), ("A man.", "A person.", "entailment"),
                                          ("B", "C", "Neutral"), ("D", "E", "contradictory")])
    examples = read_xnli_tsv(path)
    assert [(e.id, e.line, e.label) for e in examples] == [(0, 2, 0), (1, 3, 1), (2, 4, 2)]
    assert (examples[0].premise, examples[0].hypothesis) == ("A man.", "A person.")


@pytest.mark.parametrize("content, line, reason", [
    ("a\tb\tentailment\na\tb\n", 2, "expected 3 tab-separated fields"),           # XTREME unlabelled test
    ("a\tb\tc\tneutral\n", 1, "got 4 field(s)"),
    ("a\tb\tentailment\n\na\tb\tneutral\n", 2, "an empty line"),
    ("a\tb\tentailment\n \tb\tneutral\n", 2, "empty premise"),
    ("a\t\tneutral\n", 1, "empty hypothesis"),
    ("a\tb\tentailment\na\tb\tmaybe\n", 2, "unknown label 'maybe'"),
    ("a\tb\tneutral\na\tb\t\n", 2, "empty label"),
])
def test_malformed_rows_name_file_and_line(tmp_path, content, line, reason):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_xnli_tsv(str(path))
    assert (err.value.path, err.value.line) == (str(path), line)
    assert str(err.value).startswith(f"{path}:{line}: ") and reason in str(err.value)


def test_empty_and_undecodable_files(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(InputError, match="empty") as err:
        read_xnli_tsv(str(empty))
    assert str(err.value).startswith(f"{empty}: ")
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes("a\tb\tneutral\nca\xf1a\tb\tneutral\n".encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8") as err:
        read_xnli_tsv(str(bad))
    assert err.value.line == 2


def test_a_header_line_is_reported(tmp_path, caplog):
    """A header-only file is not called empty, and a skipped header is logged."""
    only_header = write_tsv(tmp_path / "header.tsv", [("premise", "hypothesis", "label")])
    with pytest.raises(InputError) as err:
        read_xnli_tsv(only_header)
    assert str(err.value) == f"{only_header}: no examples (only a header line)"
    rows = write_tsv(tmp_path / "rows.tsv", [("sentence1", "sentence2", "gold_label"), ("A", "B", "neutral")])
    with caplog.at_level("INFO", logger="hf_xladjust.tasks.xnli"):
        assert len(read_xnli_tsv(rows)) == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"{rows}:1: skipped the header line 'sentence1\\tsentence2\\tgold_label'"]
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(InputError) as err:
        read_xnli_tsv(str(empty))
    assert str(err.value) == f"{empty}: no examples (the file is empty)"


# --- mixed-language sets --------------------------------------------------------------------------

def test_mixed_language_set_properties():
    english, target = synthetic("en", 60), synthetic("es", 60)
    mixed = build_mixed_language(target, english, seed=13)
    assert len(mixed) == 60 and all(isinstance(m, MixedNLIExample) for m in mixed)
    for m, t, e in zip(mixed, target, english):
        assert (m.id, m.label, m.line) == (t.id, t.label, t.line)
        if m.english_side == "premise":
            assert (m.premise, m.hypothesis) == (e.premise, t.hypothesis)
        else:
            assert m.english_side == "hypothesis"
            assert (m.premise, m.hypothesis) == (t.premise, e.hypothesis)
    sides = [m.english_side for m in mixed]
    assert 10 < sides.count("premise") < 50  # both choices occur
    assert build_mixed_language(target, english, seed=13) == mixed  # same seed, same set
    assert [m.english_side for m in build_mixed_language(target, english, seed=14)] != sides
    # a prefix (--max_predict_samples) makes the same choices as the whole set
    assert build_mixed_language(target[:10], english[:10], seed=13) == mixed[:10]


def test_mixed_language_needs_parallel_files():
    with pytest.raises(InputError, match="12 examples, but the English set en.tsv has 11") as err:
        build_mixed_language(synthetic("es", 12), synthetic("en", 11), 0, "es.tsv", "en.tsv")
    assert err.value.path == "es.tsv"
    labels = [i % 3 for i in range(12)]
    labels[7] = (labels[7] + 1) % 3
    with pytest.raises(InputError, match="not line-parallel") as err:
        build_mixed_language(synthetic("es", 12, labels), synthetic("en", 12), 0, "es.tsv", "en.tsv")
    assert str(err.value).startswith("es.tsv:8: gold label")


def test_recorded_mixed_set_must_match_the_seed_and_the_sets(tmp_path):
    """A choices file is reused only for the seed and the sets it records: another --mixed_language_seed or
    other data against an existing --mixed_language_sets folder stops, naming the file."""
    from hf_xladjust.tasks.xnli import mixed_language_set

    target, english = synthetic("es", 30), synthetic("en", 30)
    path = str(tmp_path / "test_mixed_es.json")
    first = mixed_language_set(target, english, 5, path, "data/test-es.tsv", "data/test-en.tsv")
    assert first == build_mixed_language(target, english, 5)
    # the same seed and files, here from another folder and as a prefix: the recorded set
    assert mixed_language_set(target[:9], english[:9], 5, path, "/elsewhere/data/test-es.tsv",
                              "../data/test-en.tsv") == first[:9]
    assert build_mixed_language(target, english, 6) != first
    with pytest.raises(InputError, match="choices drawn with seed 5, but this run's mixed-language seed is 6") as err:
        mixed_language_set(target, english, 6, path, "data/test-es.tsv", "data/test-en.tsv")
    assert err.value.path == path
    with pytest.raises(InputError, match="recorded for target_source data/test-es.tsv, but this run's is "
                                         r"xnli\[es\]:test") as err:
        mixed_language_set(target, english, 5, path, "xnli[es]:test", "data/test-en.tsv")
    assert err.value.path == path
    # a file that records no seed (e.g. written by hand) is used as it is
    (tmp_path / "hand.json").write_text(json.dumps({"english_side": ["hypothesis"] * 30}))
    hand = mixed_language_set(target, english, 6, str(tmp_path / "hand.json"), "data/test-es.tsv")
    assert [m.english_side for m in hand] == ["hypothesis"] * 30


# --- labels and predictions -----------------------------------------------------------------------

def test_model_labels():
    config = BertConfig()  # a bare encoder: LABEL_0, LABEL_1
    assert model_label_ids(config, "enc") == [0, 1, 2]
    assert config.id2label == dict(enumerate(LABELS)) and config.label2id == {ln: i for i, ln in enumerate(LABELS)}
    assert config.num_labels == 3
    mnli = BertConfig(id2label={0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"},
                      architectures=["BertForSequenceClassification"])
    assert model_label_ids(mnli, "mnli") == [2, 1, 0]  # our id -> the model's id; its config unchanged
    assert mnli.id2label[0] == "CONTRADICTION"
    sentiment = BertConfig(id2label={0: "negative", 1: "positive"}, architectures=["BertForSequenceClassification"])
    with pytest.raises(InputError, match="missing entailment, neutral, contradiction") as err:
        model_label_ids(sentiment, "sst2-model")
    assert str(err.value).startswith("sst2-model: ")
    unnamed_head = BertConfig(architectures=["BertForSequenceClassification"])
    with pytest.raises(InputError, match="classification head has 2 labels"):
        model_label_ids(unnamed_head, "m")
    # names are matched case-insensitively, "contradictory" included; a label of its own is refused
    xnli_mt = BertConfig(id2label={0: "Entailment", 1: "contradictory", 2: "neutral"})
    assert model_label_ids(xnli_mt, "mt") == [0, 2, 1]
    four = BertConfig(id2label={0: "entailment", 1: "neutral", 2: "contradiction", 3: "unknown"})
    with pytest.raises(InputError, match=r"do not match XNLI's \(entailment, neutral, contradiction\): "
                                         r"not in XNLI: unknown$"):
        model_label_ids(four, "four")


def test_write_predictions(tmp_path):
    examples = synthetic("es", 4)
    mixed = build_mixed_language(examples, synthetic("en", 4), seed=0)
    path = tmp_path / "p.jsonl"
    acc = write_predictions(str(path), mixed, [0, 0, 2, 0], [0.5, 0.6, 0.7, 0.8])
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert acc == 0.75 == accuracy([0, 0, 2, 0], [0, 1, 2, 0])
    assert records[1] == {"id": 1, "gold": "neutral", "pred": "entailment", "correct": False, "score": 0.6,
                          "english_side": mixed[1].english_side}
    write_predictions(str(path), examples, [0, 1, 2, 0])
    assert set(json.loads(path.read_text().splitlines()[0])) == {"id", "gold", "pred", "correct"}


def hub_split(examples, names=LABELS):
    """A Dataset shaped like a split of the Hub's `xnli` (ClassLabel `label` with these names)."""
    features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=list(names))})
    return datasets.Dataset.from_dict(
        {"premise": [e.premise for e in examples], "hypothesis": [e.hypothesis for e in examples],
         "label": [list(names).index(LABELS[e.label]) for e in examples]}, features=features)


def test_examples_from_hub():
    examples = synthetic("es", 6)
    # label ids of the Hub dataset are translated to ours by name, whatever its order
    got = examples_from_hub(hub_split(examples, ("contradiction", "entailment", "neutral")), "hub")
    assert [(e.id, e.premise, e.label) for e in got] == [(e.id, e.premise, e.label) for e in examples]
    with pytest.raises(InputError, match="unknown label 'negative'"):
        examples_from_hub(hub_split(examples[:0], ("negative", "positive")), "sst2")
    with pytest.raises(InputError, match="missing column"):
        examples_from_hub(hub_split(examples).remove_columns("hypothesis"), "hub")


# --- run_glue_xl.py -------------------------------------------------------------------------------

def run_main(monkeypatch, *args):
    import run_glue_xl

    monkeypatch.setattr(sys, "argv", ["run_glue_xl.py", *map(str, args), *COMMON_FLAGS])
    run_glue_xl.main()


def check_outputs(out, splits_and_sets):
    results = json.loads((out / "all_results.json").read_text())
    for split, names in splits_and_sets.items():
        for name in names:
            records = [json.loads(ln) for ln in (out / f"predictions_{split}_{name}.jsonl").read_text().splitlines()]
            assert len(records) == results[f"{split}_{name}_samples"]
            assert [r["id"] for r in records] == list(range(len(records)))
            assert results[f"{split}_{name}_accuracy"] == pytest.approx(
                sum(r["correct"] for r in records) / len(records))
            assert all(r["correct"] == (r["gold"] == r["pred"]) and 0 < r["score"] <= 1 for r in records)
            assert all(("english_side" in r) == name.startswith("mixed_") for r in records)
    return results


def test_run_glue_xl_end_to_end(tmp_path, tiny_model_dir, monkeypatch):
    data = tmp_path / "data"
    train = parallel_tsvs(data, ("en",), n=24, prefix="dev").format(lang="en")
    test_pattern = parallel_tsvs(data, ("en", "es", "ru"), n=12, prefix="test")
    dev_pattern = parallel_tsvs(data, ("en", "es", "ru"), n=9, prefix="val")
    out = tmp_path / "out"
    run_main(monkeypatch, "--model_name_or_path", tiny_model_dir, "--train_file", train,
             "--validation_file_pattern", dev_pattern, "--test_file_pattern", test_pattern,
             "--eval_languages", "es", "ru", "--mixed_language_eval", "--do_train", "--do_eval", "--do_predict",
             "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--output_dir", out)
    results = check_outputs(out, {"test": ["en", "es", "ru", "mixed_es", "mixed_ru"],
                                  "eval": ["en", "es", "ru", "mixed_es", "mixed_ru"]})
    assert results["test_es_samples"] == 12 and results["eval_ru_samples"] == 9 and results["train_samples"] == 24
    assert "test_mixed_en_accuracy" not in results
    config = AutoConfig.from_pretrained(out)
    assert config.id2label == dict(enumerate(LABELS)) and config.label2id == {ln: i for i, ln in enumerate(LABELS)}
    # each mixed example records which side is English; its gold label is that of the English line
    en = read_xnli_tsv(test_pattern.format(lang="en"))
    for line in (out / "predictions_test_mixed_es.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert rec["english_side"] in ("premise", "hypothesis") and rec["gold"] == LABELS[en[rec["id"]].label]
    run_args = json.loads((out / "run_args.json").read_text())
    assert run_args["mixed_language_seed"] == MIXED_LANGUAGE_SEED and run_args["continual"] is None

    # the fine-tuned model evaluated again, without training, on a prefix of the same data in a local
    # repository laid out as facebook/xnli (read by the real load_dataset): the same mixed choices
    repo = write_repo(tmp_path / "facebook" / "xnli",
                      {lang: {"test": nli_split(read_xnli_tsv(test_pattern.format(lang=lang)))}
                       for lang in ("en", "es")})
    again = tmp_path / "again"
    run_main(monkeypatch, "--model_name_or_path", out, "--dataset_name", repo, "--eval_languages", "es",
             "--mixed_language_eval", "--do_predict", "--max_predict_samples", "5", "--output_dir", again)
    check_outputs(again, {"test": ["en", "es", "mixed_es"]})

    def sides(path):
        return [json.loads(ln)["english_side"] for ln in path.read_text().splitlines()]

    assert sides(again / "predictions_test_mixed_es.jsonl") == sides(out / "predictions_test_mixed_es.jsonl")[:5]


def test_run_glue_xl_bad_label_exits_with_file_and_line(tmp_path, tiny_model_dir, monkeypatch):
    data = tmp_path / "data"
    pattern = parallel_tsvs(data, ("en", "es"), n=6)
    bad = data / "test-es.tsv"
    lines = bad.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tentails"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    monkeypatch.setattr(sys, "argv", [str(ROOT / "run_glue_xl.py"), "--model_name_or_path", tiny_model_dir,
                                      "--test_file_pattern", pattern, "--eval_languages", "es", "--do_predict",
                                      "--output_dir", str(tmp_path / "out"), *COMMON_FLAGS])
    with pytest.raises(SystemExit) as exit_:  # the script's `if __name__ == "__main__":` block
        runpy.run_path(str(ROOT / "run_glue_xl.py"), run_name="__main__")
    assert exit_.value.code == (f"run_glue_xl.py: error: {bad}:4: unknown label 'entails'; expected one of "
                                "entailment, neutral, contradiction")


def test_run_glue_xl_model_with_other_labels(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    model.save_pretrained(tmp_path / "sst2")
    pattern = parallel_tsvs(tmp_path / "data", ("en", "es"), n=3)
    with pytest.raises(InputError, match="do not match XNLI") as err:
        run_main(monkeypatch, "--model_name_or_path", tmp_path / "sst2", "--tokenizer_name", tiny_model_dir,
                 "--test_file_pattern", pattern, "--eval_languages", "es", "--do_predict",
                 "--output_dir", tmp_path / "out")
    assert err.value.path == str(tmp_path / "sst2")


def test_run_args_record_the_max_seq_length_used(tmp_path, tiny_model_dir, monkeypatch):
    """--max_seq_length over the model's limit is capped: run_args.json records both."""
    data = tmp_path / "data"
    out = tmp_path / "out"
    run_main(monkeypatch, "--model_name_or_path", tiny_model_dir,
             "--train_file", parallel_tsvs(data, ("en",), n=8, prefix="dev").format(lang="en"),
             "--test_file_pattern", parallel_tsvs(data, ("en", "es"), n=4), "--eval_languages", "es",
             "--do_train", "--do_predict", "--per_device_train_batch_size", "8", "--num_train_epochs", "1",
             "--max_seq_length", "1000", "--output_dir", out)
    run_args = json.loads((out / "run_args.json").read_text())
    assert run_args["data"]["max_seq_length"] == 1000 and run_args["max_seq_length_used"] == 64


def test_mixed_language_seed_is_one_value_for_the_script_the_grid_and_the_readme():
    import run_glue_xl
    from hf_xladjust.experiments.config import TASK_DEFAULTS

    parsed = run_glue_xl.build_parser().parse_args_into_dataclasses(["--model_name_or_path", "m", "--output_dir", "o"])
    (script_default,) = [p.mixed_language_seed for p in parsed if hasattr(p, "mixed_language_seed")]
    # 0: what the grid has always passed (its steps' fingerprints include it)
    assert script_default == TASK_DEFAULTS["nli"]["args"]["mixed_language_seed"] == 0
    readme = (ROOT / "docs" / "tasks.md").read_text(encoding="utf-8")
    assert "--mixed_language_seed 42" not in readme and "`--mixed_language_seed 0`" in readme


def test_run_glue_xl_continual(tmp_path, tiny_model_dir, monkeypatch):
    from hf_xladjust.alignment.pairs import AlignedPair, write_aligned_pairs

    pairs = [AlignedPair(e.split(), s.split(), [(k, k) for k in range(min(len(e.split()), len(s.split())))])
             for e, s in zip(fixture_lines("en"), fixture_lines("es"))]
    write_aligned_pairs(str(tmp_path / "pairs.jsonl"), pairs)
    data = tmp_path / "data"
    train = parallel_tsvs(data, ("en",), n=16, prefix="dev").format(lang="en")
    out = tmp_path / "out"
    run_main(monkeypatch, "--model_name_or_path", tiny_model_dir, "--train_file", train,
             "--test_file_pattern", parallel_tsvs(data, ("en", "es"), n=6), "--eval_languages", "es",
             "--mixed_language_eval", "--do_train", "--do_predict", "--per_device_train_batch_size", "8",
             "--num_train_epochs", "1", "--aligned_pairs", tmp_path / "pairs.jsonl", "--align_batch_size", "4",
             "--output_dir", out)
    check_outputs(out, {"test": ["en", "es", "mixed_es"]})
    logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(logged) == 2 and all("align_loss" in h and "anchor_loss" in h for h in logged)
    assert json.loads((out / "run_args.json").read_text())["continual"]["align_weight"] == 0.01


# --- real data ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_run_glue_xl_on_shared_xnli(tmp_path, tiny_model_dir, shared_data, monkeypatch):
    """200 English dev pairs (dev-en is the only English NLI training data here; never test-en), then
    the first 40 test pairs of every language plus the mixed sets; plain and continual fine-tuning."""
    xnli = shared_data / "xnli"
    langs = ("es", "ru", "vi", "hi")
    sets = ["en", *langs, *(f"mixed_{ln}" for ln in langs)]
    common = ("--model_name_or_path", tiny_model_dir, "--train_file", xnli / "dev-en.tsv",
              "--max_train_samples", "200", "--test_file_pattern", str(xnli / "test-{lang}.tsv"),
              "--max_predict_samples", "40", "--mixed_language_eval", "--do_train", "--do_predict",
              "--logging_steps", "5")
    run_main(monkeypatch, *common, "--output_dir", tmp_path / "plain")
    # continual: `en ||| es` lines from the fixtures, a hand-written diagonal alignment (no aligner binary)
    en, es = fixture_lines("en"), fixture_lines("es")
    (tmp_path / "en-es.txt").write_text("".join(f"{a} ||| {b}\n" for a, b in zip(en, es)), encoding="utf-8")
    (tmp_path / "en-es.align").write_text("".join(
        " ".join(f"{k}-{k}" for k in range(min(len(a.split()), len(b.split())))) + "\n" for a, b in zip(en, es)))
    run_main(monkeypatch, *common, "--align_train_file", tmp_path / "en-es.txt", "--target_lang", "es",
             "--aligner", "pharaoh", "--alignment_file", tmp_path / "en-es.align", "--output_dir", tmp_path / "cont")

    english = read_xnli_tsv(str(xnli / "test-en.tsv"))[:40]
    for run in ("plain", "cont"):
        out = tmp_path / run
        results = check_outputs(out, {"test": sets})
        assert results["train_samples"] == 200 and all(results[f"test_{s}_samples"] == 40 for s in sets)
        for lang in langs:  # the recorded choices are those of the seeded construction on the real files
            target = read_xnli_tsv(str(xnli / f"test-{lang}.tsv"))[:40]
            expected = [m.english_side for m in build_mixed_language(target, english, seed=MIXED_LANGUAGE_SEED)]
            got = [json.loads(ln)["english_side"]
                   for ln in (out / f"predictions_test_mixed_{lang}.jsonl").read_text().splitlines()]
            assert got == expected
        logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
        assert logged and all(("align_loss" in h) == (run == "cont") for h in logged)
