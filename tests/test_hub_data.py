"""Hub datasets by today's ids: namespace/name everywhere they are named, legacy names mapped, and every script
reading Hub-shaped local repositories through the real `datasets.load_dataset` (tests/hub_repos.py)."""
import json
import logging
import re
import sys
from pathlib import Path

import pytest
import yaml
from conftest import diagonal_pharaoh, fixture_lines
from hub_repos import card_header, translation_split, write_repo

from hf_xladjust.alignment.pairs import AlignmentDataArguments, build_aligned_pairs
from hf_xladjust.alignment.parallel import TranslationDataset, read_parallel
from hf_xladjust.errors import InputError
from hf_xladjust.hub_data import LEGACY_DATASET_IDS, canonical_dataset_id
from hf_xladjust.tasks.qa import (
    mlqa_hub_sets,
    mlqa_sets,
    read_squad_json,
    tydiqa_hub_sets,
    xquad_hub_sets,
    xquad_sets,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
COMMON = ("--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--save_strategy", "no",
          "--logging_steps", "1")


# --- ids --------------------------------------------------------------------------------------------

def test_legacy_names_map_to_canonical_ids_with_one_log_line(caplog, tmp_path, monkeypatch):
    from hf_xladjust import hub_data

    monkeypatch.setattr(hub_data, "_announced", set())
    with caplog.at_level(logging.WARNING, logger="hf_xladjust.hub_data"):
        assert [canonical_dataset_id(n) for n in ("xnli", "wikiann", "squad", "xtreme", "xnli")] == [
            "facebook/xnli", "unimelb-nlp/wikiann", "rajpurkar/squad", "google/xtreme", "facebook/xnli"]
    assert len(caplog.records) == 4 and "--dataset_name xnli: reading the Hub's facebook/xnli" in caplog.text
    for kept in ("google/xtreme", "Helsinki-NLP/opus-100", str(tmp_path), "./data/xnli"):
        assert canonical_dataset_id(kept) == kept
    with pytest.raises(InputError, match="--parallel_dataset 'opus100': a Hub dataset id is namespace/name"):
        canonical_dataset_id("opus100", "--parallel_dataset")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "xnli").mkdir()  # a local folder of that name is read as the folder
    assert canonical_dataset_id("xnli") == "xnli"


# What names a dataset in the docs, the examples and the scripts: guard 3 of the before-stop hook (--dataset_name,
# dataset_name:) and also the options this toolkit adds (*_dataset), the grid's `dataset:` and load_dataset("...").
DATASET_REFERENCE = re.compile(
    r"(?:--(?:dataset_name|[a-z]+_dataset)[ =]+|\b(?:dataset_name|[a-z]+_dataset|dataset):[ \t]*|"
    r"load_dataset\(\s*[\"'])([^\s,}\[\]\"'`)\\]+)")
PLACEHOLDERS = {"Optional", "str", "NAME", "PATH", "DIR", "REPO"}


def bad_dataset_ids(text: str):
    """The dataset ids named in `text` that are neither namespace/name nor a path nor a placeholder."""
    bad = []
    for value in DATASET_REFERENCE.findall(text):
        value = value.rstrip(".:;")
        if value in PLACEHOLDERS or value.startswith((".", "/", "$", "~", "{", "<")):
            continue
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", value):
            bad.append(value)
    return bad


def test_the_id_check_finds_what_datasets_refuses():
    text = ("python run_glue_xl.py --dataset_name xnli\n  args: {dataset_name: wikiann, bf16: true}\n"
            "--mlqa_dataset=xtreme --parallel_dataset opus100\n  es: {dataset: opus100, config: en-es}\n"
            "load_dataset('squad')\n--dataset_name facebook/xnli --xquad_dataset ./local/xtreme --dataset_name PATH")
    assert bad_dataset_ids(text) == ["xnli", "wikiann", "xtreme", "opus100", "opus100", "squad"]


def test_every_documented_dataset_id_is_namespace_name_or_a_path():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "examples").rglob("*")),
             *sorted(ROOT.glob("run_*.py"))]
    found = {}
    for path in files:
        if path.is_file() and path.suffix in (".md", ".yaml", ".yml", ".py", ".sh"):
            text = path.read_text(encoding="utf-8")
            bad = bad_dataset_ids(text)
            if bad:
                found[str(path.relative_to(ROOT))] = bad
    assert found == {}
    # and the check does look at the documented places: the canonical ids are named there
    named = " ".join(DATASET_REFERENCE.findall((ROOT / "README.md").read_text(encoding="utf-8")
                                              + (ROOT / "examples" / "grid_paper.yaml").read_text(encoding="utf-8")))
    assert all(canonical in named for canonical in LEGACY_DATASET_IDS.values())


def test_the_paper_grid_plans_only_namespace_name_ids(tmp_path, tiny_model_dir, capsys):
    """examples/grid_paper.yaml's dry run: every dataset a step reads is a namespace/name id; a config with the
    legacy names plans the same commands."""
    from hf_xladjust.experiments.__main__ import main as grid_main

    cfg = yaml.safe_load((ROOT / "examples" / "grid_paper.yaml").read_text())
    corpus = tmp_path / "en-es.txt"
    corpus.write_text("".join(f"{e} ||| {s}\n" for e, s in zip(fixture_lines("en"), fixture_lines("es"))))
    cfg.update(model_name_or_path=tiny_model_dir, results_dir=str(tmp_path / "results"), workdir=str(ROOT), seeds=1,
               parallel={lang: str(corpus) for lang in cfg["languages"]})
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert grid_main([str(path), "--dry_run"]) == 0
    plan = capsys.readouterr().out
    commands = [line for line in plan.splitlines() if " run_" in line]
    named = set(re.findall(r"--(?:dataset_name|[a-z]+_dataset) (\S+)", plan))
    assert named == {"facebook/xnli", "unimelb-nlp/wikiann", "rajpurkar/squad", "google/xtreme"}
    assert len(commands) > 20 and bad_dataset_ids(plan) == []
    qa = next(c for c in commands if "run_qa_xl.py" in c)
    assert all(f"--{k}_dataset google/xtreme" in qa for k in ("xquad", "mlqa", "tydiqa"))

    for task, legacy in (("nli", "xnli"), ("ner", "wikiann"), ("qa", "squad"), ("xsr", "xtreme")):
        cfg["tasks"][task]["args"]["dataset_name"] = legacy
    path.write_text(yaml.safe_dump(cfg))
    assert grid_main([str(path), "--dry_run"]) == 0
    assert set(re.findall(r"--dataset_name (\S+)", capsys.readouterr().out)) == {
        "facebook/xnli", "unimelb-nlp/wikiann", "rajpurkar/squad", "google/xtreme"}


# --- the repositories ----------------------------------------------------------------------------------

def test_the_local_repositories_are_laid_out_as_the_hub_serves_them(hub_repos):
    xtreme = Path(hub_repos["google/xtreme"])
    assert (xtreme / "PAN-X.es" / "validation-00000-of-00001.parquet").is_file()
    header = card_header(xtreme)
    configs = {c["config_name"]: c for c in header["configs"]}
    assert configs["MLQA.es.en"]["data_files"] == [{"split": "validation", "path": "MLQA.es.en/validation-*"},
                                                   {"split": "test", "path": "MLQA.es.en/test-*"}]
    info = {i["config_name"]: i for i in header["dataset_info"]}
    tags = next(f for f in info["PAN-X.es"]["features"] if f["name"] == "ner_tags")
    assert tags["list"]["class_label"]["names"] == {
        str(i): t for i, t in enumerate(["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"])}
    label = next(f for f in card_header(hub_repos["facebook/xnli"])["dataset_info"][0]["features"]
                 if f["name"] == "label")
    assert label["dtype"]["class_label"]["names"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}


def test_qa_sets_from_the_hub_equal_the_files(hub_repos):
    xtreme, qa = hub_repos["google/xtreme"], FIXTURES / "qa"

    def content(sets):
        return [(s.name, s.metric, s.lang, s.labelled, [(e.id, e.question, e.context, e.answers) for e in s.examples])
                for s in sets]

    assert content(xquad_hub_sets(xtreme, ["es", "ru"])) == content(xquad_sets(str(qa), ["es", "ru"]))
    hub_mlqa = mlqa_hub_sets(xtreme, "dev", ["es", "ru"])  # no Russian in MLQA: skipped
    assert [s.name for s in hub_mlqa] == ["mlqa_es-c_es-q", "mlqa_en-c_es-q", "mlqa_es-c_en-q"]
    assert content(hub_mlqa) == content(mlqa_sets(str(qa / "mlqa"), "dev", ["es", "ru"]))
    assert all(s.metric == "mlqa" and s.source.endswith(":validation") for s in hub_mlqa)
    assert [s.source.endswith(":test") for s in mlqa_hub_sets(xtreme, "test", ["es"])] == [True] * 3
    # TyDi QA GoldP: one split for all languages; each set keeps its language's questions only
    tydi = tydiqa_hub_sets(xtreme, ["es", "ru", "en"])
    assert [(s.name, s.lang, len(s.examples)) for s in tydi] == [("tydiqa_ru", "ru", 2), ("tydiqa_en", "en", 4)]
    ru = read_squad_json(str(qa / "tydiqa.goldp.ru.dev.json"))[0]
    assert [(e.id, e.question, e.context) for e in tydi[0].examples] == [(e.id, e.question, e.context) for e in ru]
    assert all(e.id.startswith("english-") for e in tydi[1].examples)


# --- parallel data from a translation column -------------------------------------------------------------

def pharaoh(path, n=12):
    return str(diagonal_pharaoh(path, n))


def test_a_translation_dataset_reads_as_the_files(hub_repos, tmp_path):
    opus = hub_repos["Helsinki-NLP/opus-100"]
    corpus = TranslationDataset(opus, "en-es").read()
    files = read_parallel(str(FIXTURES / "en.txt"), str(FIXTURES / "es.txt"))
    assert (corpus.src, corpus.tgt, corpus.line_numbers) == (files.src, files.tgt, files.line_numbers)
    swapped = TranslationDataset(opus, "en-es").read("es", "en")  # `xx ||| en` order when asked for
    assert (swapped.src, swapped.tgt) == (files.tgt, files.src)
    # the same filters, sample and links as the files
    args = AlignmentDataArguments(target_lang="es", aligner="pharaoh", alignment_file=pharaoh(tmp_path / "al"),
                                  max_sentences=7, max_words=10)
    from_files = build_aligned_pairs(args, str(FIXTURES / "en.txt"), str(FIXTURES / "es.txt"), seed=3)
    from_hub = build_aligned_pairs(args, seed=3, dataset=TranslationDataset(opus, "en-es"))
    assert from_hub == from_files and from_hub[1]["sentences_kept"] > 0
    with pytest.raises(InputError, match="no target language 'ru' in the translation column"):
        TranslationDataset(opus, "en-es").read(target_lang="ru")
    pairs = [("a b", "c d"), ("e", "")]
    bad = write_repo(tmp_path / "bad", {"en-es": {"train": translation_split(pairs)}})
    with pytest.raises(InputError, match=r"empty target sentence \(row 2\)"):
        TranslationDataset(bad, "en-es").read()
    assert TranslationDataset(bad, "en-es").read(skip_bad_lines=True).skipped == {"empty_side": 1}


# --- every script through the real load_dataset ----------------------------------------------------------

def run(monkeypatch, script, *args):
    import importlib

    module = importlib.import_module(script)
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *map(str, args)])
    module.main()


def results(out):
    return json.loads((out / "all_results.json").read_text())


def test_run_adjust_and_continual_from_a_translation_dataset(hub_repos, tiny_model_dir, tmp_path, monkeypatch):
    opus = hub_repos["Helsinki-NLP/opus-100"]
    alignment = pharaoh(tmp_path / "al")
    out = tmp_path / "adjusted"
    run(monkeypatch, "run_adjust", "--model_name_or_path", tiny_model_dir, "--parallel_dataset", opus,
        "--parallel_config", "en-es", "--target_lang", "es", "--aligner", "pharaoh", "--alignment_file", alignment,
        "--max_sentences", "8", "--per_device_train_batch_size", "4", "--max_steps", "2", "--output_dir", out,
        "--report_to", "none", "--use_cpu", "--disable_tqdm", "true")
    files = tmp_path / "files"
    run(monkeypatch, "run_adjust", "--model_name_or_path", tiny_model_dir, "--source_file", FIXTURES / "en.txt",
        "--target_file", FIXTURES / "es.txt", "--target_lang", "es", "--aligner", "pharaoh", "--alignment_file",
        alignment, "--max_sentences", "8", "--per_device_train_batch_size", "4", "--max_steps", "2",
        "--output_dir", files, "--report_to", "none", "--use_cpu", "--disable_tqdm", "true")
    assert (out / "aligned_pairs.jsonl").read_text() == (files / "aligned_pairs.jsonl").read_text()
    stats = json.loads((out / "alignment_stats.json").read_text())
    assert stats["sentences_in_corpus"] == 12 and stats["sentences_read"] == 8
    assert json.loads((out / "run_args.json").read_text())["alignment"]["parallel_dataset"] == opus

    # continual alignment while fine-tuning on XNLI, both from the Hub layout
    cont = tmp_path / "cont"
    run(monkeypatch, "run_glue_xl", "--model_name_or_path", tiny_model_dir,
        "--dataset_name", hub_repos["facebook/xnli"], "--eval_languages", "es", "--do_train", "--do_predict",
        "--max_train_samples", "16", "--max_predict_samples", "6", "--per_device_train_batch_size", "8",
        "--num_train_epochs", "1", "--parallel_dataset", opus,
        "--parallel_config", "en-es", "--target_lang", "es", "--aligner", "pharaoh", "--alignment_file", alignment,
        "--align_batch_size", "4", "--output_dir", cont, *COMMON)
    got = results(cont)
    assert got["train_samples"] == 16 and got["test_es_samples"] == 6 and "test_es_accuracy" in got
    logged = [h for h in json.loads((cont / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(logged) == 2 and all(h["align_loss"] > 0 for h in logged)
    assert json.loads((cont / "run_args.json").read_text())["continual"]["parallel_dataset"] == opus


def test_run_ner_qa_xsr_from_the_hub_layout(hub_repos, tiny_model_dir, tmp_path, monkeypatch):
    xtreme = hub_repos["google/xtreme"]
    ner = tmp_path / "ner"
    run(monkeypatch, "run_ner_xl", "--model_name_or_path", tiny_model_dir, "--dataset_name", xtreme,
        "--dataset_config_pattern", "PAN-X.{lang}", "--eval_languages", "es", "ru", "--do_train", "--do_eval",
        "--max_seq_length", "32", "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--output_dir", ner,
        *COMMON)
    got = results(ner)
    assert (got["train_samples"], got["eval_en_samples"], got["eval_es_samples"], got["eval_ru_samples"]) == (
        10, 3, 4, 3)
    assert all(f"eval_{lang}_token_f1" in got for lang in ("en", "es", "ru"))

    qa = tmp_path / "qa"
    run(monkeypatch, "run_qa_xl", "--model_name_or_path", tiny_model_dir,
        "--dataset_name", hub_repos["rajpurkar/squad"], "--xquad_dataset", xtreme, "--mlqa_dataset", xtreme,
        "--tydiqa_dataset", xtreme, "--eval_languages", "es", "ru",
        "--do_train", "--do_eval", "--do_predict", "--max_seq_length", "64", "--doc_stride", "16",
        "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--output_dir", qa, *COMMON)
    sets = json.loads((qa / "run_args.json").read_text())["eval_sets"]
    assert set(sets["eval"]) == {"en", "mlqa_es-c_es-q", "mlqa_en-c_es-q", "mlqa_es-c_en-q"}
    assert set(sets["test"]) == {"xquad_es", "xquad_es-q_en-c", "xquad_en-q_es-c", "xquad_ru", "xquad_ru-q_en-c",
                                 "xquad_en-q_ru-c", "mlqa_es-c_es-q", "mlqa_en-c_es-q", "mlqa_es-c_en-q", "tydiqa_ru"}
    assert sets["test"]["mlqa_es-c_en-q"]["metric"] == "mlqa" and sets["test"]["xquad_es"]["metric"] == "squad"
    tydi = sets["test"]["tydiqa_ru"]  # the Russian questions only, from the one split of every language
    assert tydi["questions"] == 2 and not tydi["labelled"] and tydi["source"].startswith(xtreme)
    assert "test_xquad_es_f1" in results(qa)

    xsr = tmp_path / "xsr"
    run(monkeypatch, "run_xsr", "--model_name_or_path", tiny_model_dir, "--dataset_name", xtreme, "--languages", "es",
        "ru", "--output_dir", xsr)
    got = results(xsr)
    assert 0 < got["xsr_es_mrr"] <= 1 and 0 < got["xsr_ru_mrr"] <= 1


# --- the grid: a language's corpus from a translation dataset ----------------------------------------------

def test_the_grid_takes_a_translation_dataset_as_a_languages_corpus(tmp_path, hub_repos, monkeypatch):
    from test_experiments import argmap, base_config

    from hf_xladjust.experiments.align import build_parser as align_parser
    from hf_xladjust.experiments.config import parse_config
    from hf_xladjust.experiments.plan import build_plan

    opus = hub_repos["Helsinki-NLP/opus-100"]
    cfg = base_config(tmp_path, seeds=[0])
    cfg["parallel"]["es"] = {"dataset": opus, "config": "en-es"}
    steps = {s.name: s for s in build_plan(parse_config(cfg, "g.yaml"))}
    align = argmap(steps["align/es"])
    assert (align["parallel_dataset"], align["parallel_config"], align["parallel_split"], align["target_lang"]) == (
        [opus], ["en-es"], ["train"], ["es"])
    align_parser().parse_args_into_dataclasses(steps["align/es"].args)  # the step's flags are the script's
    adjust = argmap(steps["adjust/es/seed0"])
    assert adjust["parallel_dataset"] == [opus] and adjust["aligner"] == ["pharaoh"] and "train_file" not in adjust
    cont = argmap(steps["nli/original_cont/es/seed0"])  # continual: the same flags as run_adjust.py's
    assert cont["parallel_dataset"] == [opus] and cont["alignment_file"] == adjust["alignment_file"]
    assert "align_source_file" in argmap(steps["nli/original_cont/ru/seed0"])  # ru keeps its files

    # the shared alignment of the dataset lines up with the rows run_adjust.py reads
    from hf_xladjust.experiments import align as align_module

    out = tmp_path / "aligned"
    monkeypatch.setattr(sys, "argv", ["align", "--parallel_dataset", opus, "--parallel_config", "en-es",
                                      "--target_lang", "es", "--output_dir", str(out)])
    align_module.main()
    links = (out / "alignment.pharaoh").read_text().splitlines()
    assert len(links) == 12 and json.loads((out / "alignment_stats.json").read_text())["sentence_pairs"] == 12

    for bad, message in ((dict(dataset=opus, train_file="x.txt"), "give train_file, source_file and target_file, "
                          "or dataset"), (dict(config="en-es", train_file="x.txt"), "give train_file"),
                         (dict(dataset="opus100"), "parallel.es.dataset 'opus100': a Hub dataset id is")):
        cfg["parallel"]["es"] = bad
        with pytest.raises(InputError, match=re.escape(message)):
            parse_config(cfg, "g.yaml")
    cfg["parallel"]["es"] = {"dataset": opus, "config": "en-es"}
    cfg["regimes"] = ["original", "adjusted", "adjusted_multi"]
    with pytest.raises(InputError, match="adjusted_multi passes --parallel es=FILES, which takes files"):
        build_plan(parse_config(cfg, "g.yaml"))
    cfg["regimes"] = ["original", "adjusted"]
    cfg["tasks"]["nli"]["args"]["parallel_dataset"] = opus  # the grid names each regime's corpus itself
    with pytest.raises(InputError, match="tasks.nli.args: the grid sets parallel_dataset itself"):
        build_plan(parse_config(cfg, "g.yaml"))


def test_no_test_fakes_load_dataset():
    """The Hub path is tested through the real `datasets.load_dataset` on local repositories, never a stand-in."""
    fake = re.compile(r"setattr\(\s*datasets\s*,\s*[\"']load_dataset|load_dataset\s*=\s*(?!.*import)|"
                      r"patch\(\s*[\"']datasets\.load_dataset")
    offenders = [f"{p.name}:{n}" for p in sorted(Path(__file__).parent.glob("*.py")) if p.name != Path(__file__).name
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if fake.search(line)]
    assert offenders == []
    assert fake.search('monkeypatch.setattr(datasets, "load_dataset", fake)')
