"""Failing before the slow part, in one line (issue 16.3): every script loads its tokenizer and config and
checks every input path before it reads, aligns or writes anything; the grid's dry run reports every
problem of a configuration at once."""
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURES, fixture_lines
from transformers import AutoConfig, AutoTokenizer

from hf_xladjust.alignment.pairs import AlignedPair, write_aligned_pairs
from hf_xladjust.cli import load_pretrained, run_main
from hf_xladjust.errors import InputError
from hf_xladjust.experiments.__main__ import main as grid_main
from hf_xladjust.files import InputPath, check_input_files

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline",
           "TOKENIZERS_PARALLELISM": "false"}
FLAGS = ("--report_to", "none", "--use_cpu", "--disable_tqdm", "true")


def run_script(script, *args):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args), *FLAGS], capture_output=True,
                          text=True, env={**os.environ, **OFFLINE}, cwd=ROOT, timeout=300)
    return proc, time.perf_counter() - start


def assert_one_line(proc, *fragments):
    """A nonzero exit whose whole stderr is one line holding every fragment (stdout only has logs)."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


def aligned_pairs_file(path):
    pairs = [AlignedPair(a.split(), b.split(), [(0, 0)]) for a, b in zip(fixture_lines("en"), fixture_lines("es"))]
    write_aligned_pairs(str(path), pairs)
    return path


# --- run_adjust.py, as a user runs it -------------------------------------------------------------------

def test_bad_model_path_is_one_line_before_the_aligner(tmp_path):
    """eflomal (the default aligner) writes its cache into --output_dir: the folder is not even created."""
    out, bad = tmp_path / "out", tmp_path / "no-such-model"
    proc, seconds = run_script("run_adjust.py", "--model_name_or_path", bad, "--source_file", FIXTURES / "en.txt",
                               "--target_file", FIXTURES / "es.txt", "--target_lang", "es", "--output_dir", out)
    assert_one_line(proc, f"run_adjust.py: error: {bad}: --model_name_or_path: no such folder")
    assert not out.exists() and seconds < 120


def test_missing_parallel_file_is_one_line_naming_it(tmp_path, tiny_model_dir):
    out, missing = tmp_path / "out", tmp_path / "wiki.es"
    proc, _ = run_script("run_adjust.py", "--model_name_or_path", tiny_model_dir, "--source_file",
                         FIXTURES / "en.txt", "--target_file", missing, "--target_lang", "es", "--output_dir", out)
    assert_one_line(proc, f"run_adjust.py: error: {missing}: no such file (--target_file)")
    assert not out.exists()


def test_missing_aligned_pairs_is_one_line_before_the_model_loads(tmp_path, tiny_model_dir):
    out, missing = tmp_path / "out", tmp_path / "missing.jsonl"
    nli = FIXTURES.parent.parent / "examples" / "demo_xnli" / "train-en.tsv"
    proc, _ = run_script("run_glue_xl.py", "--model_name_or_path", tiny_model_dir, "--train_file", nli,
                         "--do_train", "--aligned_pairs", missing, "--output_dir", out)
    assert_one_line(proc, f"run_glue_xl.py: error: {missing}: no such file (--aligned_pairs)")
    assert not out.exists()


# --- every script, in process: the order of what it does ---------------------------------------------

@pytest.fixture
def nothing_slow(monkeypatch):
    """Make aligning, reading task data or loading model weights fail the test: none may run before the
    model path and the input files are checked."""
    import hf_xladjust.alignment.aligners as aligners

    def forbidden(*args, **kwargs):
        raise AssertionError("ran before the checks")

    monkeypatch.setattr(aligners, "align_corpus", forbidden)
    for module, names in (("run_glue_xl", ["load_nli_examples"]), ("run_ner_xl", ["load_ner_examples"]),
                          ("run_qa_xl", ["read_squad_json"]), ("run_xsr", ["read_tatoeba", "read_parallel_lines"])):
        mod = __import__(module)
        for name in names:
            monkeypatch.setattr(mod, name, forbidden)
    return forbidden


def exit_message(monkeypatch, module, *args):
    """Run `module.main()` as its command line does; the message it exits with (one line, or the test fails)."""
    mod = __import__(module)
    monkeypatch.setattr(sys, "argv", [f"{module}.py", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        run_main(mod.main)
    message = str(e.value.code)
    assert "\n" not in message, message
    return message


def data_args(tmp_path, script):
    """Arguments naming data that exists, so that only the model is wrong."""
    en = str(FIXTURES / "en.txt")
    if script == "run_adjust":
        return ["--source_file", en, "--target_file", str(FIXTURES / "es.txt"), "--target_lang", "es"]
    if script == "run_xsr":
        return ["--source_file", str(FIXTURES / "es.txt"), "--target_file", en, "--source_lang", "es",
                "--device", "cpu"]
    train = tmp_path / ("train.json" if script == "run_qa_xl" else "train.tsv")
    train.write_text("{}")
    return ["--train_file", str(train), "--do_train", *FLAGS]


@pytest.mark.parametrize("script", ["run_adjust", "run_glue_xl", "run_ner_xl", "run_qa_xl", "run_xsr"])
def test_every_script_names_a_bad_model_path_before_reading_data(tmp_path, monkeypatch, nothing_slow, script):
    out, bad = tmp_path / "out", tmp_path / "typo-model"
    extra = list(FLAGS) if script == "run_adjust" else []
    message = exit_message(monkeypatch, script, "--model_name_or_path", bad, "--output_dir", out,
                           *data_args(tmp_path, script), *extra)
    assert message == f"{script}.py: error: {bad}: --model_name_or_path: no such folder"
    assert not out.exists()


def test_tokenizer_config_and_anchor_paths_are_named(tmp_path, monkeypatch, nothing_slow, tiny_model_dir):
    out, bad = tmp_path / "out", tmp_path / "gone"
    adjust = ["--model_name_or_path", tiny_model_dir, "--output_dir", out, *data_args(tmp_path, "run_adjust"),
              *FLAGS]
    assert exit_message(monkeypatch, "run_adjust", *adjust, "--tokenizer_name", bad) == (
        f"run_adjust.py: error: {bad}: --tokenizer_name: no such folder")
    (tmp_path / "empty").mkdir()
    message = exit_message(monkeypatch, "run_adjust", *adjust, "--config_name", tmp_path / "empty")
    assert message.startswith(f"run_adjust.py: error: {tmp_path / 'empty'}: --config_name: cannot load the config "
                              "from this folder (")
    pairs = aligned_pairs_file(tmp_path / "pairs.jsonl")
    glue = ["--model_name_or_path", tiny_model_dir, "--output_dir", out, *data_args(tmp_path, "run_glue_xl"),
            "--aligned_pairs", pairs]
    assert exit_message(monkeypatch, "run_glue_xl", *glue, "--anchor_model_name_or_path", bad) == (
        f"run_glue_xl.py: error: {bad}: --anchor_model_name_or_path: no such folder")
    assert not out.exists()


def test_every_missing_input_is_named_in_one_line(tmp_path, monkeypatch, nothing_slow, tiny_model_dir):
    """All at once, each with its option; none of them read, the model not looked at."""
    out = tmp_path / "out"
    message = exit_message(
        monkeypatch, "run_ner_xl", "--model_name_or_path", tmp_path / "not-checked-yet", "--output_dir", out,
        "--train_file", tmp_path / "train.tsv", "--do_train", "--do_eval", "--validation_file_pattern",
        str(tmp_path / "dev-{lang}.tsv"), "--eval_languages", "es", "--align_source_file", FIXTURES / "en.txt",
        "--align_target_file", tmp_path / "wiki.es", "--target_lang", "es", *FLAGS)
    assert message == (f"run_ner_xl.py: error: 4 inputs cannot be read: {tmp_path}/train.tsv (--train_file): "
                       f"no such file; {tmp_path}/dev-en.tsv (--validation_file_pattern (en)): no such file; "
                       f"{tmp_path}/dev-es.tsv (--validation_file_pattern (es)): no such file; {tmp_path}/wiki.es "
                       "(--align_target_file): no such file")
    qa = exit_message(monkeypatch, "run_qa_xl", "--model_name_or_path", tiny_model_dir, "--output_dir", out,
                      "--do_predict", "--xquad_dir", tmp_path, "--eval_languages", "es", "--test_sets",
                      f"extra={tmp_path}", *FLAGS)
    assert qa == (f"run_qa_xl.py: error: 3 inputs cannot be read: {tmp_path} (--test_sets extra): a folder, not a "
                  f"file; {tmp_path}/xquad.en.json (--xquad_dir (en)): no such file; {tmp_path}/xquad.es.json "
                  "(--xquad_dir (es)): no such file")
    xsr = exit_message(monkeypatch, "run_xsr", "--model_name_or_path", tiny_model_dir, "--output_dir", out,
                       "--tatoeba_dir", tmp_path / "tatoeba", "--languages", "es", "ru")
    assert xsr == f"run_xsr.py: error: {tmp_path}/tatoeba: no such folder (--tatoeba_dir)"  # not its 4 files
    assert not out.exists()


def test_check_input_files(tmp_path):
    (tmp_path / "ok.txt").write_text("x\n")
    check_input_files([InputPath("--a", str(tmp_path / "ok.txt")), InputPath("--b", str(tmp_path), "folder"),
                       InputPath("--c", str(tmp_path), "any"), InputPath("--a", str(tmp_path / "ok.txt"))])
    with pytest.raises(InputError, match=rf"^{tmp_path}: a folder, not a file \(--a\)$"):
        check_input_files([InputPath("--a", str(tmp_path))])
    with pytest.raises(InputError) as e:
        check_input_files([InputPath("--a", str(tmp_path / "ok.txt"), "folder"), InputPath("--b", "nope.txt"),
                           InputPath("--d", str(tmp_path / "gone"), "folder"),
                           InputPath("--d (es)", str(tmp_path / "gone" / "x.es"))])
    assert str(e.value) == (f"3 inputs cannot be read: {tmp_path}/ok.txt (--a): not a folder; nope.txt (--b): no such "
                            f"file; {tmp_path}/gone (--d): no such folder")


def test_load_pretrained_names_what_cannot_load(tmp_path, tiny_model_dir):
    assert load_pretrained(AutoConfig, tiny_model_dir, "--model_name_or_path").model_type == "bert"
    with pytest.raises(InputError, match=r"^\./models/x: --config_name: no such folder$"):
        load_pretrained(AutoConfig, "./models/x", "--config_name")
    with pytest.raises(InputError, match=r"^someone/not-a-model: --tokenizer_name: not a folder, and no tokenizer of "
                                         r"this name can be loaded from the Hub or its cache \(.+\)$"):
        load_pretrained(AutoTokenizer, "someone/not-a-model", "--tokenizer_name")


# --- the grid's dry run ---------------------------------------------------------------------------------

def test_dry_run_reports_every_problem_at_once(tmp_path):
    """A missing model folder, a misspelled task argument and a missing input file: all three in one dry
    run (which still prints the plan), exit status 1; each problem once, however many steps share it."""
    train = tmp_path / "train-en.tsv"
    train.write_text("a\tb\tentailment\n")
    for lang in ("en", "es"):
        (tmp_path / f"test-{lang}.tsv").write_text("a\tb\tentailment\n")
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(tmp_path / "models" / "gone"), "results_dir": str(tmp_path / "results"),
        "languages": ["es"], "seeds": 2, "regimes": ["original", "adjusted"],
        "parallel": {"es": str(tmp_path / "en-es.txt")},  # missing
        "tasks": {"nli": {"args": {"train_file": str(train), "test_file_pattern": str(tmp_path / "test-{lang}.tsv"),
                                   "num_trian_epochs": 1}}},
        "workdir": str(ROOT), "env": OFFLINE}))
    with pytest.raises(InputError) as e:
        grid_main([str(config), "--dry_run"])
    lines = str(e.value).splitlines()
    assert lines[0] == f"{config}: 3 problems, nothing was run:"
    assert lines[1:] == [
        f"  model_name_or_path: no model folder {tmp_path}/models/gone",
        f"  step align/es: input {tmp_path}/en-es.txt (--train_file): no such file (and 2 more steps)",
        "  step nli/original/all/seed0: run_glue_xl.py has no argument 'num_trian_epochs' (did you mean "
        "num_train_epochs?) (key num_trian_epochs in tasks.nli.args) (and 3 more steps)"]
    done = subprocess.run([sys.executable, "-m", "hf_xladjust.experiments", str(config), "--dry_run"], cwd=ROOT,
                          env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"hf_xladjust.experiments: error: {lines[0]}"] + lines[1:]
    assert "# nli/adjusted/es/seed1 [to run]" in done.stdout and not (tmp_path / "results").exists()


def test_dry_run_checks_models_and_files_the_steps_name(tmp_path):
    """Beyond the configuration's model: a task's --tokenizer_name, and a {lang} pattern's files for every
    evaluated language; results-folder paths (made by earlier steps) are not inputs."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "train-en.tsv").write_text("a\tb\tentailment\n")
    (tmp_path / "test-en.tsv").write_text("a\tb\tentailment\n")
    config = tmp_path / "grid.yaml"
    config.write_text(textwrap.dedent(f"""\
        model_name_or_path: {tmp_path}/model
        results_dir: {tmp_path}/results
        languages: [es, ru]
        seeds: 1
        regimes: [original]
        tasks:
          nli:
            args: {{train_file: {tmp_path}/train-en.tsv, test_file_pattern: "{tmp_path}/test-{{lang}}.tsv",
                   tokenizer_name: ./tokenizers/gone}}
        workdir: {ROOT}
        """))
    with pytest.raises(InputError) as e:
        grid_main([str(config), "--dry_run"])
    assert str(e.value).splitlines()[1:] == [
        f"  step nli/original/all/seed0: tokenizer_name: no model folder {ROOT}/tokenizers/gone",
        f"  step nli/original/all/seed0: input {tmp_path}/test-es.tsv (--test_file_pattern (es)): no such file",
        f"  step nli/original/all/seed0: input {tmp_path}/test-ru.tsv (--test_file_pattern (ru)): no such file"]
