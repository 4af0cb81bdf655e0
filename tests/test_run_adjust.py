"""run_adjust.py end to end: its outputs, the logged loss against an independent computation, and
clear failures on bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    FIXTURES,
    build_tiny_model,
    fixture_lines,
    free_port,
    independent_info_nce,
    independent_pull_mse,
    paper_alignment_terms,
)
from transformers import AutoConfig, AutoModel, AutoTokenizer

from hf_xladjust.alignment.pairs import read_aligned_pairs

ROOT = Path(__file__).resolve().parents[1]
OUTPUT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "aligned_pairs.jsonl",
                "alignment_stats.json", "trainer_state.json", "run_args.json")


def run_adjust(*args, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(ROOT / "run_adjust.py"), *map(str, args),
                           "--report_to", "none", "--use_cpu", "--disable_tqdm", "true"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def no_dropout_model(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("tiny-nodrop"))
    config = AutoConfig.from_pretrained(path)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.save_pretrained(path)
    return path


def diagonal_pharaoh(path, lang_a="en", lang_b="es"):
    lines = [" ".join(f"{k}-{k}" for k in range(min(len(a.split()), len(b.split()))))
             for a, b in zip(fixture_lines(lang_a), fixture_lines(lang_b))]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_logged_align_loss_equals_independent_mse(tmp_path, no_dropout_model):
    out = tmp_path / "out"
    run_adjust("--model_name_or_path", no_dropout_model, "--source_file", FIXTURES / "en.txt",
               "--target_file", FIXTURES / "es.txt", "--target_lang", "es", "--aligner", "pharaoh",
               "--alignment_file", diagonal_pharaoh(tmp_path / "al.txt"), "--output_dir", out,
               "--learning_rate", "0", "--per_device_train_batch_size", "32", "--logging_steps", "1")
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    pairs = read_aligned_pairs(str(out / "aligned_pairs.jsonl"))
    assert len(pairs) == 12 and all(i == j for p in pairs for i, j in p.links)
    logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "align_loss" in h]
    assert len(logged) == 1 and "loss" in logged[0]
    model = AutoModel.from_pretrained(out).eval()
    # the default is the paper's construction: CLS<->CLS and SEP<->SEP links next to the word links
    expected, _ = paper_alignment_terms(model, None, AutoTokenizer.from_pretrained(out), pairs, include_clssep=True)
    assert logged[0]["align_loss"] == pytest.approx(expected, rel=1e-4)
    assert expected != pytest.approx(independent_pull_mse(model, AutoTokenizer.from_pretrained(out), pairs), rel=1e-3)
    assert logged[0]["anchor_loss"] == pytest.approx(0.0, abs=1e-9)
    stats = json.loads((out / "alignment_stats.json").read_text())
    assert stats["sentences_kept"] == 12 and stats["links_kept"] == sum(len(p.links) for p in pairs)
    assert stats["links_special_tokens"] == 24 and logged[0]["batches_without_links"] == 0
    assert json.loads((out / "train_results.json").read_text())["batches_without_links"] == 0


def test_contrastive_objective_decreases_and_is_recorded(tmp_path, no_dropout_model):
    """--align_objective contrastive: the first logged align_loss is the InfoNCE of the start model computed
    by hand, and a few steps on the same batch (all 12 pairs) bring it down."""
    out = tmp_path / "out"
    run_adjust("--model_name_or_path", no_dropout_model, "--source_file", FIXTURES / "en.txt",
               "--target_file", FIXTURES / "es.txt", "--target_lang", "es", "--aligner", "pharaoh",
               "--alignment_file", diagonal_pharaoh(tmp_path / "al.txt"), "--output_dir", out,
               "--align_objective", "contrastive", "--per_device_train_batch_size", "12", "--max_steps", "5",
               "--warmup_ratio", "0", "--learning_rate", "1e-3", "--logging_steps", "1")
    logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "align_loss" in h]
    pairs = read_aligned_pairs(str(out / "aligned_pairs.jsonl"))
    start = AutoModel.from_pretrained(no_dropout_model).eval()
    tok = AutoTokenizer.from_pretrained(no_dropout_model)
    assert logged[0]["align_loss"] == pytest.approx(independent_info_nce(start, start, tok, pairs, 0.1), rel=1e-4)
    losses = [h["align_loss"] for h in logged]
    assert len(losses) == 5 and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert logged[-1]["anchor_loss"] > 0 and logged[-1]["batches_without_links"] == 0
    loss_args = json.loads((out / "run_args.json").read_text())["loss"]
    assert (loss_args["align_objective"], loss_args["align_temperature"]) == ("contrastive", 0.1)


@pytest.mark.parametrize("args, code", [
    (["--align_objective", "cosine"], 2),  # argparse: "invalid choice: 'cosine' (choose from 'l2', 'contrastive')"
    (["--align_temperature", "0"], "run_adjust.py: error: --align_temperature must be positive, got 0.0"),
    (["--align_temperature", "-0.5"], "run_adjust.py: error: --align_temperature must be positive, got -0.5"),
    (["--align_objective", "contrastive", "--sub_batch_size", "4"],
     "run_adjust.py: error: --sub_batch_size is the paper's l2 loop; the contrastive objective takes its "
     "candidates from the whole batch (drop --sub_batch_size)"),
])
def test_bad_objective_arguments_are_one_line_errors(tmp_path, tiny_model_dir, monkeypatch, capsys, args, code):
    import run_adjust

    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["run_adjust.py", "--model_name_or_path", str(tiny_model_dir), "--train_file",
                                      str(joined_corpus(tmp_path, "es")), "--output_dir", str(out), *args])
    with pytest.raises(SystemExit) as err:
        run_adjust.run_main(run_adjust.main)
    assert err.value.code == code
    if code == 2:
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--align_objective" in last and "invalid choice: 'cosine'" in last and "contrastive" in last
    assert not out.exists()


def test_eflomal_run_trains_and_saves_a_loadable_encoder(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    run_adjust("--model_name_or_path", tiny_model_dir, "--train_file", joined_corpus(tmp_path, "ru"),
               "--target_lang", "ru", "--output_dir", out, "--per_device_train_batch_size", "4",
               "--learning_rate", "1e-3", "--logging_steps", "1", "--seed", "3")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "align_loss" in h]
    assert len(steps) >= 2 and all(h["anchor_loss"] >= 0 for h in steps)
    assert steps[-1]["anchor_loss"] > 0  # the model moved away from f0
    assert (out / "alignment_cache").is_dir() and any((out / "alignment_cache").iterdir())
    before = AutoModel.from_pretrained(tiny_model_dir).state_dict()
    after = AutoModel.from_pretrained(out).state_dict()
    assert before.keys() == after.keys()
    assert any((before[k] != after[k]).any() for k in before)


def joined_corpus(tmp_path, lang):
    path = tmp_path / f"en-{lang}.txt"
    path.write_text("".join(f"{a} ||| {b}\n" for a, b in zip(fixture_lines("en"), fixture_lines(lang))),
                    encoding="utf-8")
    return path


def assert_clean_failure(proc, out, *fragments):
    assert proc.returncode != 0
    message = proc.stderr.strip().splitlines()[-1]
    for fragment in fragments:
        assert fragment in message, proc.stderr[-2000:]
    assert not (out / "config.json").exists() and not (out / "aligned_pairs.jsonl").exists()


def test_unequal_parallel_files_fail_naming_the_files(tmp_path, tiny_model_dir):
    short = tmp_path / "short.es"
    short.write_text("\n".join(fixture_lines("es")[:10]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    proc = run_adjust("--model_name_or_path", tiny_model_dir, "--source_file", FIXTURES / "en.txt",
                      "--target_file", short, "--target_lang", "es", "--output_dir", out, check=False)
    assert_clean_failure(proc, out, "short.es", "11")


def test_out_of_range_pharaoh_index_fails_with_line(tmp_path, tiny_model_dir):
    al = diagonal_pharaoh(tmp_path / "al.txt")
    lines = al.read_text().splitlines()
    lines[4] += " 0-99"
    al.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    proc = run_adjust("--model_name_or_path", tiny_model_dir, "--source_file", FIXTURES / "en.txt",
                      "--target_file", FIXTURES / "es.txt", "--target_lang", "es", "--aligner", "pharaoh",
                      "--alignment_file", al, "--output_dir", out, check=False)
    assert_clean_failure(proc, out, "al.txt:5", "99")


def test_pharaoh_without_alignment_file_is_a_one_line_error(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    proc = run_adjust("--model_name_or_path", tiny_model_dir, "--source_file", FIXTURES / "en.txt",
                      "--target_file", FIXTURES / "es.txt", "--target_lang", "es", "--aligner", "pharaoh",
                      "--output_dir", out, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "run_adjust.py: error: --aligner pharaoh needs --alignment_file (one line of i-j links per sentence pair)")
    assert not out.exists()


def test_rerun_into_a_finished_adjustment_needs_overwrite_output_dir(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    args = ("--model_name_or_path", tiny_model_dir, "--train_file", joined_corpus(tmp_path, "es"),
            "--target_lang", "es", "--aligner", "pharaoh", "--alignment_file", diagonal_pharaoh(tmp_path / "al.txt"),
            "--output_dir", out, "--per_device_train_batch_size", "12")
    run_adjust(*args)
    weights = (out / "model.safetensors").stat().st_mtime_ns
    proc = run_adjust(*args, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"run_adjust.py: error: {out}: holds a finished run (run_args.json); pass --overwrite_output_dir true "
        "to replace it, or choose another --output_dir")
    assert (out / "model.safetensors").stat().st_mtime_ns == weights
    run_adjust(*args, "--overwrite_output_dir", "true")
    assert (out / "model.safetensors").stat().st_mtime_ns != weights


def test_empty_corpus_fails(tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    out = tmp_path / "out"
    proc = run_adjust("--model_name_or_path", tiny_model_dir, "--train_file", empty, "--target_lang", "es",
                      "--output_dir", out, check=False)
    assert_clean_failure(proc, out, "empty.txt")


@pytest.mark.slow
def test_real_en_ru_corpus(tmp_path, tiny_model_dir, shared_data):
    """Acceptance: 500 sentences of real en-ru parallel data through the default aligner."""
    folder = shared_data / "parallel" / "flores101_devtest"
    out = tmp_path / "out"
    run_adjust("--model_name_or_path", tiny_model_dir, "--source_file", folder / "eng.devtest",
               "--target_file", folder / "rus.devtest", "--target_lang", "ru", "--max_sentences", "500",
               "--output_dir", out, "--per_device_train_batch_size", "32", "--align_max_length", "64")
    for name in OUTPUT_FILES:
        assert (out / name).is_file(), name
    stats = json.loads((out / "alignment_stats.json").read_text())
    assert stats["sentences_read"] == 500 and stats["sentences_kept"] > 300 and stats["links_kept"] > 2000
    assert len(read_aligned_pairs(str(out / "aligned_pairs.jsonl"))) == stats["sentences_kept"]
    AutoModel.from_pretrained(out)


@pytest.mark.slow
def test_two_processes_split_the_corpus(tmp_path, tiny_model_dir):
    """`accelerate launch` with two gloo processes (accelerate's --cpu starts only one, so --multi_gpu
    without GPUs): 12 pairs at 2 per process make 3 steps, and rank 0 saves a loadable encoder."""
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()),
         str(ROOT / "run_adjust.py"), "--model_name_or_path", tiny_model_dir,
         "--train_file", joined_corpus(tmp_path, "es"), "--target_lang", "es", "--output_dir", out,
         "--per_device_train_batch_size", "2", "--logging_steps", "1", "--report_to", "none", "--use_cpu"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert len([h for h in state["log_history"] if "align_loss" in h]) == 3
    AutoModel.from_pretrained(out)


def test_fast_align_defaults_to_the_symmetrisation_it_returns(tmp_path, tiny_model_dir):
    pytest.importorskip("systran_align")
    out = tmp_path / "out"
    run_adjust("--model_name_or_path", tiny_model_dir, "--train_file", joined_corpus(tmp_path, "vi"),
               "--target_lang", "vi", "--aligner", "fast_align", "--output_dir", out)
    stats = json.loads((out / "alignment_stats.json").read_text())
    assert stats["sentences_read"] == 12 and stats["links_kept"] > 0
    assert any(name.startswith("fast_align.grow-diag-final-and.") for name in os.listdir(out / "alignment_cache"))


def test_xx_en_file_with_target_lang_en_and_model_flags_in_process(tmp_path, tiny_model_dir, monkeypatch):
    """The paper's `es ||| en` file with `--target_lang en` alone puts English in `src`; --model_revision,
    --token and --trust_remote_code reach every from_pretrained; the statistics go through write_json."""
    import transformers

    import run_adjust
    from hf_xladjust import files

    corpus = tmp_path / "es-en.txt"
    corpus.write_text("".join(f"{b} ||| {a}\n" for a, b in zip(fixture_lines("en"), fixture_lines("es"))),
                      encoding="utf-8")
    calls, written = [], {}
    for name in ("AutoConfig", "AutoTokenizer", "AutoModel"):
        cls = getattr(transformers, name)  # the classes themselves: the model loads in hf_xladjust.trainers.adjust

        def spy(*args, _name=name, _load=cls.from_pretrained, **kwargs):
            calls.append((_name, args[0], kwargs))
            return _load(*args, **kwargs)
        monkeypatch.setattr(cls, "from_pretrained", spy)

    def write_json(path, obj, **kwargs):
        written[os.path.basename(path)] = obj
        return files.write_json(path, obj, **kwargs)
    monkeypatch.setattr(run_adjust, "write_json", write_json)
    out = tmp_path / "out"
    alignment = diagonal_pharaoh(tmp_path / "al", "es", "en")
    monkeypatch.setattr(sys, "argv", [
        "run_adjust.py", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(corpus),
        "--target_lang", "en", "--aligner", "pharaoh", "--alignment_file", str(alignment), "--output_dir",
        str(out), "--max_steps", "1", "--model_revision", "v1.0", "--token", "hf_test",
        "--trust_remote_code", "true", "--report_to", "none", "--use_cpu", "--disable_tqdm", "true"])
    run_adjust.main()

    ours = [(name, kw) for name, path, kw in calls if path == str(tiny_model_dir)]
    assert {name for name, _ in ours} == {"AutoConfig", "AutoTokenizer", "AutoModel"}
    for name, kw in ours:
        assert (kw["revision"], kw["token"], kw["trust_remote_code"]) == ("v1.0", "hf_test", True), name
    pairs = read_aligned_pairs(str(out / "aligned_pairs.jsonl"))
    assert pairs[0].src == fixture_lines("en")[0].split() and pairs[0].tgt == fixture_lines("es")[0].split()
    stats = json.loads((out / "alignment_stats.json").read_text())
    assert written["alignment_stats.json"] == stats and stats["english_side"] == "target"
