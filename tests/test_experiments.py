"""The experiment grid (hf_xladjust.experiments): configuration checks, the plan's commands and dependencies,
fingerprints, markers and resumption, submission to Slurm (a recorded sbatch), the dry-run estimate, and
(slow) a real tiny grid through submitit's local executor, killed and resumed, against an uninterrupted run."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from conftest import fixture_lines

from hf_xladjust.errors import InputError
from hf_xladjust.experiments.__main__ import main as grid_main
from hf_xladjust.experiments.config import load_config, parse_config
from hf_xladjust.experiments.engine import estimate, format_estimate
from hf_xladjust.experiments.plan import build_plan, dependents
from hf_xladjust.experiments.runner import SUCCESS, StepFailed, is_done, run_step

ROOT = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline",
           "TOKENIZERS_PARALLELISM": "false"}
LABELS = ("entailment", "neutral", "contradiction")


def printed_p_values(stdout, tasks):
    """The report's printed p-value tables (one per task, after each results table): row label -> its cells
    ("p vs Original / p vs Adjusted" per column)."""
    printed = stdout.split("| p (vs Original / vs Adjusted) |")
    assert len(printed) == tasks + 1, stdout[-3000:]
    tables = []
    for after in printed[1:]:
        lines = [line for line in after.split("\n\n")[0].splitlines() if line.startswith("| ")]
        tables.append({line.split(" | ")[0][2:]: line.strip("| ").split(" | ")[1:] for line in lines})
    return tables


def write_nli(folder, n_train=96, n_test=24):
    """English training tsv and line-parallel test tsvs (en, es, ru) from the fixture sentences."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, langs, n, offset in (("train", ("en",), n_train, 0), ("test", ("en", "es", "ru"), n_test, 5)):
        for lang in langs:
            lines = fixture_lines(lang)
            rows = [f"{lines[(i + offset) % 12]}\t{lines[(i * 5 + 1 + offset) % 12]}\t{LABELS[i % 3]}\n"
                    for i in range(n)]
            (folder / f"{name}-{lang}.tsv").write_text("".join(rows), encoding="utf-8")
    return folder


def write_parallel(path):
    """48 `en ||| es` lines: pairs of fixture sentences joined."""
    en, es = fixture_lines("en"), fixture_lines("es")
    path.write_text("".join(f"{en[i]} {en[(i + k) % 12]} ||| {es[i]} {es[(i + k) % 12]}\n"
                            for k in range(1, 5) for i in range(12)), encoding="utf-8")
    return str(path)


def base_config(tmp_path, **over):
    nli = write_nli(tmp_path / "xnli")
    cfg = {
        "model_name_or_path": str(tmp_path / "model"),
        "results_dir": str(tmp_path / "results"),
        "languages": ["es", "ru"],
        "seeds": 2,
        "regimes": ["original", "adjusted", "adjusted_cont", "original_cont"],
        "parallel": {"es": write_parallel(tmp_path / "en-es.txt"), "ru": {"source_file": str(tmp_path / "en-es.txt"),
                                                                        "target_file": str(tmp_path / "en-es.txt")}},
        "alignment": {"args": {"max_sentences": 30}},
        "adjust": {"args": {"num_train_epochs": 1}, "resources": {"gpus": 1, "hours": 1, "est_hours": 0.25}},
        "common_args": {"report_to": "none"},
        "tasks": {"nli": {"args": {"train_file": str(nli / "train-en.tsv"),
                                   "test_file_pattern": str(nli / "test-{lang}.tsv")},
                          "resources": {"gpus": 2, "num_processes": 2, "hours": 3, "est_hours": 0.5}}},
        "workdir": str(ROOT),
    }
    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text("{}")
    cfg.update(over)
    return cfg


def argmap(step):
    """`--flag v1 v2` -> {flag: [v1, v2]} of a step's arguments."""
    out, key = {}, None
    for a in step.args:
        if a.startswith("--"):
            key = a[2:]
            out[key] = []
        else:
            out[key].append(a)
    return out


# --- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"regimes": ["original", "adapted"]}, "unknown regime 'adapted'"),
    ({"seeds": 0}, "not a positive count"),
    ({"seeds": [1, 1]}, "repeated seed"),
    ({"colour": "red"}, "unknown key(s) colour"),
    ({"parallel": {"es": "a.txt"}}, "no parallel corpus for ru"),
    ({"adjust": {"resouces": {}}}, "unknown key(s) resouces in adjust"),
    ({"tasks": {"pos": {}}}, "tasks.pos: not a known task"),
    ({"tasks": {"xsr": {}}}, "evaluation-only task has no continual regime"),
    ({"executor": {"cluster": "lsf"}}, "local, slurm or debug"),
    ({"tasks": {"nli": {"regime_resources": {"adjusted_cont": {"gpu": 2}}}}},
     "unknown key(s) gpu in tasks.nli.regime_resources.adjusted_cont"),
])
def test_config_errors_name_the_file_and_key(tmp_path, change, message):
    cfg = {**base_config(tmp_path), **change}
    with pytest.raises(InputError) as err:
        parse_config(cfg, "grid.yaml")
    assert str(err.value).startswith("grid.yaml: ") and message in str(err.value)


def test_grid_arguments_cannot_be_overridden(tmp_path):
    cfg = base_config(tmp_path)
    cfg["tasks"]["nli"]["args"]["seed"] = 3
    with pytest.raises(InputError, match="the grid sets seed itself"):
        build_plan(parse_config(cfg, "grid.yaml"))


def test_yaml_errors_give_the_line(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("model_name_or_path: m\nlanguages: [es\nseeds: 2\n")
    with pytest.raises(InputError, match="invalid YAML") as err:
        load_config(str(path))
    assert err.value.path.endswith("grid.yaml") and err.value.line is not None


# --- the plan -------------------------------------------------------------------------------------

def test_plan_layout_commands_and_dependencies(tmp_path):
    cfg = parse_config(base_config(tmp_path), "grid.yaml")
    steps = build_plan(cfg)
    by = {s.name: s for s in steps}
    res = str(tmp_path / "results")
    names = list(by)
    # alignments, then adjustments, then fine-tunings; dependencies always come first
    assert names[:2] == ["align/es", "align/ru"]
    assert names[2:6] == ["adjust/es/seed0", "adjust/es/seed1", "adjust/ru/seed0", "adjust/ru/seed1"]
    for i, s in enumerate(steps):
        assert all(names.index(d) < i for d in s.deps)
    # 4 regimes: original once per seed for all languages, the others per language and seed
    assert len([n for n in names if n.startswith("nli/")]) == 2 + 3 * 2 * 2
    assert by["nli/original/all/seed1"].links == [f"{res}/nli/original/es/seed1", f"{res}/nli/original/ru/seed1"]

    adj = argmap(by["adjust/ru/seed1"])
    assert adj["seed"] == ["1"] and adj["output_dir"] == [f"{res}/adjust/ru/seed1"]
    assert adj["aligner"] == ["pharaoh"] and adj["alignment_file"] == [f"{res}/align/ru/alignment.pharaoh"]
    assert adj["max_sentences"] == ["30"] and adj["target_lang"] == ["ru"]
    assert by["adjust/ru/seed1"].deps == ["align/ru"]
    assert "source_file" in adj and "train_file" not in adj

    orig = argmap(by["nli/original/all/seed0"])
    assert orig["model_name_or_path"] == [str(tmp_path / "model")] and orig["eval_languages"] == ["es", "ru"]
    assert orig["mixed_language_seed"] == ["0"] and orig["seed"] == ["0"] and not by["nli/original/all/seed0"].deps

    adjusted = by["nli/adjusted/es/seed1"]
    a = argmap(adjusted)
    assert a["model_name_or_path"] == [f"{res}/adjust/es/seed1"] and a["seed"] == ["1"]  # the seed of both stages
    assert a["eval_languages"] == ["es"] and adjusted.deps == ["adjust/es/seed1"] and "aligned_pairs" not in a

    cont = argmap(by["nli/adjusted_cont/ru/seed0"])
    assert cont["aligned_pairs"] == [f"{res}/adjust/ru/seed0/aligned_pairs.jsonl"]
    assert cont["anchor_model_name_or_path"] == [str(tmp_path / "model")]

    ocont = by["nli/original_cont/es/seed1"]
    o = argmap(ocont)
    assert o["model_name_or_path"] == [str(tmp_path / "model")]
    assert o["align_train_file"] == [str(tmp_path / "en-es.txt")]
    assert o["aligner"] == ["pharaoh"] and o["max_sentences"] == ["30"] and ocont.deps == ["align/es"]
    assert o["anchor_model_name_or_path"] == [str(tmp_path / "model")]
    # multi-GPU steps go through accelerate launch
    assert ocont.command[1:5] == ["-m", "accelerate.commands.launch", "--num_processes", "2"]
    assert ocont.command[5] == "run_glue_xl.py"
    # the saved command is runnable by hand: it changes to the work folder and quotes the {lang} pattern
    script = ocont.shell_script()
    assert f"cd {ROOT}" in script and "'" + str(tmp_path / "xnli" / "test-{lang}.tsv") + "'" in script


def test_templates_and_precomputed_alignments(tmp_path):
    cfg = base_config(tmp_path, regimes=["adjusted"])
    cfg["alignment"]["files"] = {"es": "es.pharaoh", "ru": "ru.pharaoh"}
    cfg["tasks"]["nli"]["regime_args"] = {"adjusted": {"run_name": "${lang}-s${seed}",
                                                       "logging_dir": "${results_dir}/tb"}}
    steps = build_plan(parse_config(cfg, "grid.yaml"))
    assert not [s for s in steps if s.kind == "align"]
    by = {s.name: argmap(s) for s in steps}
    assert by["adjust/ru/seed0"]["alignment_file"] == ["ru.pharaoh"]
    assert by["nli/adjusted/ru/seed1"]["run_name"] == ["ru-s1"]
    assert by["nli/adjusted/ru/seed1"]["logging_dir"] == [f"{tmp_path}/results/tb"]
    cfg = base_config(tmp_path, regimes=["adjusted", "original_cont"])
    cfg["alignment"] = {"mode": "per_run", "symmetrization": "union"}  # each run aligns its own sample
    steps = build_plan(parse_config(cfg, "grid.yaml"))
    assert not [s for s in steps if s.kind == "align"]
    by = {s.name: argmap(s) for s in steps}
    assert by["adjust/es/seed1"]["aligner"] == ["eflomal"] and by["adjust/es/seed1"]["symmetrization"] == ["union"]
    assert by["nli/original_cont/ru/seed0"]["aligner"] == ["eflomal"] and "alignment_file" not in by["adjust/es/seed1"]
    cfg = base_config(tmp_path)
    cfg["tasks"]["nli"]["args"]["run_name"] = "${lang}"  # the original run has no language
    with pytest.raises(InputError, match=r"\$\{lang\} is not defined"):
        build_plan(parse_config(cfg, "grid.yaml"))


def test_multi_gpu_steps_keep_the_papers_batch(tmp_path):
    """The scripts' batch is per device: under N processes the plan passes 32/N (the continual side batch
    16/N), leaves a configured batch alone, and refuses a process count that does not divide the batch."""
    cfg = base_config(tmp_path)
    cfg["adjust"]["resources"]["num_processes"] = 4
    cfg["tasks"]["nli"]["resources"]["num_processes"] = 4
    cfg["tasks"]["nli"]["regime_resources"] = {"adjusted": {"num_processes": 1}}
    by = {s.name: s for s in build_plan(parse_config(cfg, "grid.yaml"))}
    adjust, orig, cont = (by[n] for n in ("adjust/es/seed0", "nli/original/all/seed0", "nli/adjusted_cont/es/seed0"))
    assert adjust.command[1:5] == ["-m", "accelerate.commands.launch", "--num_processes", "4"]
    assert argmap(adjust)["per_device_train_batch_size"] == ["8"] and "align_batch_size" not in argmap(adjust)
    assert argmap(orig)["per_device_train_batch_size"] == ["8"] and "align_batch_size" not in argmap(orig)
    assert argmap(cont)["per_device_train_batch_size"] == ["8"] and argmap(cont)["align_batch_size"] == ["4"]
    one = argmap(by["nli/adjusted/es/seed0"])  # one process: the scripts' own defaults (the paper's)
    assert "per_device_train_batch_size" not in one and "align_batch_size" not in one

    cfg["adjust"]["args"]["per_device_train_batch_size"] = 16  # set by the configuration: left alone
    cfg["tasks"]["nli"]["regime_args"] = {"adjusted_cont": {"align_batch_size": 16}}
    by = {s.name: argmap(s) for s in build_plan(parse_config(cfg, "grid.yaml"))}
    assert by["adjust/es/seed0"]["per_device_train_batch_size"] == ["16"]
    assert by["nli/adjusted_cont/es/seed0"]["align_batch_size"] == ["16"]
    assert by["nli/adjusted_cont/es/seed0"]["per_device_train_batch_size"] == ["8"]

    cfg = base_config(tmp_path)
    cfg["tasks"]["nli"]["resources"]["num_processes"] = 3
    with pytest.raises(InputError, match=r"tasks.nli \(original\): the paper's per_device_train_batch_size of 32 "
                                         r"does not split over num_processes 3") as err:
        build_plan(parse_config(cfg, "grid.yaml"))
    assert err.value.path == "grid.yaml"
    cfg["tasks"]["nli"]["args"]["per_device_train_batch_size"] = 11
    cfg["tasks"]["nli"]["regime_args"] = {r: {"align_batch_size": 5} for r in ("adjusted_cont", "original_cont")}
    assert {s.name for s in build_plan(parse_config(cfg, "grid.yaml"))}  # explicit batches: no refusal


def test_fingerprints_change_only_what_depends_on_a_change(tmp_path):
    base = base_config(tmp_path)
    fp0 = {s.name: s.fingerprint for s in build_plan(parse_config(base, "g.yaml"))}
    assert len(set(fp0.values())) == len(fp0)

    def changed(cfg):
        fp = {s.name: s.fingerprint for s in build_plan(parse_config(cfg, "g.yaml"))}
        return sorted(n for n in fp if fp[n] != fp0[n])

    # a stage-1 argument: the adjustments and every run that starts from them
    cfg = json.loads(json.dumps(base))
    cfg["adjust"]["args"]["learning_rate"] = 1e-5
    assert changed(cfg) == sorted(n for n in fp0 if n.startswith(("adjust/", "nli/adjusted")))
    # a task argument of one regime: only those runs
    cfg = json.loads(json.dumps(base))
    cfg["tasks"]["nli"]["regime_args"] = {"adjusted_cont": {"align_weight": 0.1}}
    assert changed(cfg) == sorted(n for n in fp0 if n.startswith("nli/adjusted_cont/"))
    # the content of an input file: the runs that read it
    with open(tmp_path / "xnli" / "test-es.tsv", "a", encoding="utf-8") as f:
        f.write("a\tb\tneutral\n")
    assert changed(base) == sorted(n for n in fp0 if n.startswith("nli/"))
    # resources other than the process count, and the results folder's place, change nothing
    now = {s.name: s.fingerprint for s in build_plan(parse_config(base, "g.yaml"))}
    moved = json.loads(json.dumps(base))
    moved["tasks"]["nli"]["resources"]["hours"] = 9
    moved["results_dir"] = str(tmp_path / "elsewhere")
    assert {s.name: s.fingerprint for s in build_plan(parse_config(moved, "g.yaml"))} == now
    moved["tasks"]["nli"]["resources"]["num_processes"] = 1
    assert {s.name: s.fingerprint for s in build_plan(parse_config(moved, "g.yaml"))} != now
    # the precision env (bf16 autocast on a CPU): every step, so that no fp32 result is reused in a bf16 grid;
    # any other env variable changes nothing
    other_env = json.loads(json.dumps(base))
    other_env["env"] = {"WANDB_MODE": "offline"}
    assert {s.name: s.fingerprint for s in build_plan(parse_config(other_env, "g.yaml"))} == now
    other_env["env"]["HF_XLADJUST_PRECISION"] = "auto"
    bf16 = {s.name: s.fingerprint for s in build_plan(parse_config(other_env, "g.yaml"))}
    assert all(bf16[n] != now[n] for n in now)
    steps = build_plan(parse_config(base, "g.yaml"))
    assert dependents(steps, ["adjust/es/seed0"]) == ["adjust/es/seed0", "nli/adjusted/es/seed0",
                                                      "nli/adjusted_cont/es/seed0"]


# --- one step: markers, resumption, failures (a small trainer-like script stands in for run_*.py) ---

TRAINER_LIKE = textwrap.dedent('''
    """Writes checkpoint-1 and checkpoint-2 like the Trainer; exits 3 after them while the file CRASH exists."""
    import json, os, sys
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    out = args["--output_dir"]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "calls.jsonl"), "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    start = args.get("--resume_from_checkpoint")
    first = int(start.rsplit("-", 1)[1]) + 1 if start else 1
    for step in range(first, 4):
        os.makedirs(os.path.join(out, f"checkpoint-{step}"), exist_ok=True)
        with open(os.path.join(out, f"checkpoint-{step}", "trainer_state.json"), "w") as f:
            json.dump({"global_step": step}, f)
        if step == 2 and os.path.exists(args["--crash_file"]):
            os.unlink(args["--crash_file"])
            sys.exit(3)
    results = {"all_results.json": {"test_es_accuracy": 0.5, "seed": args["--seed"]},
               "train_results.json": {"train_runtime": 7.0, "train_samples_per_second": 12.0}}
    for name, value in results.items():
        json.dump(value, open(os.path.join(out, name), "w"))
''')


def toy_config(tmp_path, crash_file):
    script = tmp_path / "toy_train.py"
    script.write_text(TRAINER_LIKE)
    adjust_like = tmp_path / "toy_adjust.py"
    adjust_like.write_text(TRAINER_LIKE + textwrap.dedent('''
        for name in ("config.json", "aligned_pairs.jsonl"):
            open(os.path.join(out, name), "w").write("{}")
    '''))
    cfg = base_config(tmp_path, languages=["es"], seeds=[0], regimes=["original", "adjusted", "adjusted_cont"],
                      parallel={"es": write_parallel(tmp_path / "en-es.txt")})
    cfg["alignment"]["files"] = {"es": str(tmp_path / "es.pharaoh")}
    cfg["adjust"] = {"script": str(adjust_like), "args": {"crash_file": str(crash_file)},
                     "resources": {"gpus": 1, "est_hours": 0.25}}
    cfg["tasks"] = {"nli": {"script": str(script), "args": {"crash_file": str(crash_file)},
                            "resources": {"gpus": 1, "est_hours": 0.5}}}
    cfg["common_args"] = {}
    return cfg


def test_markers_resume_and_argument_changes(tmp_path):
    crash = tmp_path / "CRASH"
    crash.touch()
    steps = build_plan(parse_config(toy_config(tmp_path, crash), "g.yaml"))
    step = next(s for s in steps if s.name == "nli/adjusted/es/seed0")
    with pytest.raises(StepFailed, match="exit status 3"):
        run_step(step)
    out = Path(step.output_dir)
    assert not (out / SUCCESS).exists() and not is_done(step)  # killed or failed: never looks finished
    assert json.loads((out / "_STARTED.json").read_text())["fingerprint"] == step.fingerprint
    assert run_step(step)["status"] == "resumed"
    calls = [json.loads(line) for line in (out / "calls.jsonl").read_text().splitlines()]
    assert calls[1][-2:] == ["--resume_from_checkpoint", str(out / "checkpoint-2")]
    assert is_done(step) and not glob.glob(str(out / "checkpoint-*"))  # checkpoints go once finished
    assert json.loads((out / SUCCESS).read_text())["resumed_from"] == str(out / "checkpoint-2")
    assert (out / "command.sh").read_text().count(step.script[0]) == 1
    assert run_step(step)["status"] == "skipped"
    # an output that disappears makes the step unfinished again
    (out / "all_results.json").unlink()
    assert not is_done(step)
    # changed arguments: the folder is emptied and the step runs from scratch
    (out / "stale.txt").write_text("from other arguments")
    cfg = toy_config(tmp_path, crash)
    cfg["tasks"]["nli"]["args"]["learning_rate"] = 1
    step2 = next(s for s in build_plan(parse_config(cfg, "g.yaml")) if s.name == step.name)
    assert step2.fingerprint != step.fingerprint
    assert run_step(step2)["status"] == "ran"
    assert not (out / "stale.txt").exists() and len((out / "calls.jsonl").read_text().splitlines()) == 1


def test_local_executor_grid_reruns_only_what_changed(tmp_path, capsys):
    """The whole cycle through submitit's local executor with trainer-like scripts: run, rerun (nothing runs),
    change one regime's argument, force one adjustment; the original run's links are made."""
    crash = tmp_path / "no-crash"
    cfg = toy_config(tmp_path, crash)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert grid_main([str(path)]) == 0
    first = capsys.readouterr().out
    assert first.count("[ran]") == 4 and "Summary: 4 ran" in first
    res = tmp_path / "results"
    assert os.readlink(res / "nli" / "original" / "es" / "seed0") == "../all/seed0"
    assert json.loads((res / "plan.json").read_text())["steps"][0]["name"] == "adjust/es/seed0"
    assert (res / "_submitit").is_dir()  # jobs went through submitit

    assert grid_main([str(path)]) == 0
    assert "Summary: 4 done" in capsys.readouterr().out

    cfg["tasks"]["nli"]["regime_args"] = {"adjusted_cont": {"align_weight": 0.5}}
    path.write_text(yaml.safe_dump(cfg))
    assert grid_main([str(path), "--cluster", "debug"]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"\[ran\]\s+(\S+)", out) == ["nli/adjusted_cont/es/seed0"]

    assert grid_main([str(path), "--cluster", "debug", "--rerun", "adjust/*"]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"\[ran\]\s+(\S+)", out) == ["adjust/es/seed0", "nli/adjusted/es/seed0",
                                                   "nli/adjusted_cont/es/seed0"]

    crash.touch()  # a failing adjustment blocks its dependents and the command says so
    assert grid_main([str(path), "--cluster", "debug", "--rerun", "adjust/*"]) == 1
    out = capsys.readouterr().out
    assert "[failed]  adjust/es/seed0" in out and "[blocked] nli/adjusted/es/seed0" in out


def test_stopping_the_grid_stops_the_running_step(tmp_path):
    """`kill <grid pid>` (or Ctrl-C) ends the running step's command as well: no orphan training."""
    script = tmp_path / "slow.py"
    script.write_text("import os, sys, time\nout = sys.argv[sys.argv.index('--output_dir') + 1]\n"
                      "open(os.path.join(out, 'pid'), 'w').write(str(os.getpid()))\ntime.sleep(300)\n")
    cfg = toy_config(tmp_path, tmp_path / "no-crash")
    cfg["regimes"] = ["original"]
    cfg["tasks"]["nli"]["script"] = str(script)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    grid = subprocess.Popen([sys.executable, "-m", "hf_xladjust.experiments", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    pid_file = tmp_path / "results" / "nli" / "original" / "all" / "seed0" / "pid"
    try:
        deadline = time.time() + 120
        while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        step_pid = int(pid_file.read_text())
        grid.send_signal(signal.SIGTERM)
        out, _ = grid.communicate(timeout=60)
        assert grid.returncode == 130 and "[stopped] nli/original/all/seed0" in out
        deadline = time.time() + 20
        while Path(f"/proc/{step_pid}").exists() and time.time() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{step_pid}").exists()
    finally:
        if grid.poll() is None:
            os.killpg(grid.pid, signal.SIGKILL)


# --- Slurm: what is submitted, without a cluster ---------------------------------------------------

FAKE_SBATCH = textwrap.dedent('''\
    #!/usr/bin/env bash
    # records the submission script and answers like sbatch (which refuses an unknown partition)
    if grep -q -- "--partition=nope" "$1"; then
        echo "sbatch: error: invalid partition specified: nope" >&2
        echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2
        exit 1
    fi
    n=$(( $(ls "$SBATCH_LOG" 2>/dev/null | wc -l) + 100 ))
    cp "$1" "$SBATCH_LOG/$n.sh"
    echo "Submitted batch job $n"
''')


def fake_sbatch(tmp_path, monkeypatch):
    """sbatch and srun on PATH that record submissions in the returned folder."""
    bin_dir, log_dir = tmp_path / "bin", tmp_path / "sbatch"
    bin_dir.mkdir()
    log_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_LOG", str(log_dir))
    return log_dir


def test_slurm_submission_with_dependencies(tmp_path, monkeypatch, capsys):
    log_dir = fake_sbatch(tmp_path, monkeypatch)
    cfg = base_config(tmp_path, languages=["es"], regimes=["original", "adjusted", "adjusted_cont"])
    cfg["executor"] = {"cluster": "slurm", "slurm": {"account": "xl"}, "setup": ["module load cuda"]}
    cfg["adjust"]["resources"] = {"gpus": 1, "hours": 1.5, "mem_gb": 40, "partition": "gpu"}
    cfg["tasks"]["nli"]["regime_resources"] = {"adjusted_cont": {"hours": 5}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert grid_main([str(path)]) == 0
    out = capsys.readouterr().out
    jobs = {m[0]: m[1] for m in re.findall(r"\[queued\]\s+(\S+): job (\d+)", out)}
    assert list(jobs) == ["align/es", "adjust/es/seed0", "adjust/es/seed1", "nli/original/all/seed0",
                          "nli/original/all/seed1", "nli/adjusted/es/seed0", "nli/adjusted/es/seed1",
                          "nli/adjusted_cont/es/seed0", "nli/adjusted_cont/es/seed1"]
    scripts = {name: (log_dir / f"{job}.sh").read_text() for name, job in jobs.items()}

    def sbatch(name, key):
        found = re.findall(rf"^#SBATCH --{key}=(.*)$", scripts[name], re.M)
        return found[0] if found else None

    assert sbatch("align/es", "dependency") is None and sbatch("nli/original/all/seed0", "dependency") is None
    assert sbatch("adjust/es/seed1", "dependency") == f"afterok:{jobs['align/es']}"
    assert sbatch("nli/adjusted_cont/es/seed1", "dependency") == f"afterok:{jobs['adjust/es/seed1']}"
    assert sbatch("nli/adjusted/es/seed0", "kill-on-invalid-dep") == "yes"
    assert sbatch("adjust/es/seed0", "gpus-per-node") == "1" and sbatch("adjust/es/seed0", "time") == "90"
    assert sbatch("adjust/es/seed0", "mem") == "40GB" and sbatch("adjust/es/seed0", "partition") == "gpu"
    assert sbatch("nli/original/all/seed0", "partition") is None  # not that of the adjustment submitted just before
    assert sbatch("nli/adjusted/es/seed0", "gpus-per-node") == "2" and sbatch("nli/adjusted/es/seed0", "time") == "180"
    assert sbatch("nli/adjusted_cont/es/seed0", "time") == "300"  # the regime's own limit
    assert sbatch("adjust/es/seed0", "account") == "xl" and "module load cuda" in scripts["adjust/es/seed0"]
    assert json.loads((tmp_path / "results" / "_submitit" / "slurm_jobs.json").read_text()) == jobs
    assert not list((tmp_path / "results").glob("nli/*/*/seed0/_STARTED.json"))  # nothing ran here

    # --dry_run prints the same sbatch options, dependencies as the names of the steps whose job ids they take
    assert grid_main([str(path), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "# every Slurm job first runs: module load cuda" in out
    printed = dict(re.findall(r"^# (\S+) \[to run\].*\n# sbatch (.*)$", out, re.M))
    assert list(printed) == list(jobs)
    names = {job: name for name, job in jobs.items()}
    for name, script in scripts.items():
        written = [f"--{o}" for o in re.findall(r"^#SBATCH --(.*)$", script, re.M)
                   if not o.startswith(("output=", "error=", "open-mode=", "signal=", "wckey="))]
        written = [re.sub(r"\d+", lambda m: names[m.group()], o) if o.startswith("--dependency=") else o
                   for o in written]
        assert printed[name].split() == written, name


def test_a_refused_submission_blocks_its_dependents_and_the_rest_stays_queued(tmp_path, monkeypatch, capsys):
    """sbatch refuses a step (here an unknown partition): one line with Slurm's message, its dependents are
    not submitted, every other step is, the job ids are saved, and the command exits 1."""
    fake_sbatch(tmp_path, monkeypatch)
    cfg = base_config(tmp_path, languages=["es"], seeds=[0], regimes=["original", "adjusted"])
    cfg["executor"] = {"cluster": "slurm"}
    cfg["adjust"]["resources"] = {"gpus": 1, "partition": "nope"}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert grid_main([str(path)]) == 1
    out = capsys.readouterr().out
    assert ("[refused] adjust/es/seed0: sbatch: error: invalid partition specified: nope / sbatch: error: Batch "
            "job submission failed: Invalid partition name specified") in out
    assert "[blocked] nli/adjusted/es/seed0 (needs adjust/es/seed0)" in out
    queued = dict(re.findall(r"\[queued\]\s+(\S+): job (\d+)", out))
    assert list(queued) == ["align/es", "nli/original/all/seed0"]
    assert json.loads((tmp_path / "results" / "_submitit" / "slurm_jobs.json").read_text()) == queued
    assert "Summary: 1 blocked, 1 failed, 2 submitted" in out


# --- dry run --------------------------------------------------------------------------------------

def test_dry_run_estimate_measured_and_assumed(tmp_path, capsys):
    cfg = toy_config(tmp_path, tmp_path / "no-crash")
    cfg["seeds"] = [0, 1]
    steps = build_plan(parse_config(cfg, "g.yaml"))
    run_step(next(s for s in steps if s.name == "nli/adjusted/es/seed0"))
    est = estimate(steps)
    kinds = est["kinds"]
    adjusted = kinds["nli/adjusted (one language)"]
    assert adjusted["source"].startswith("measured") and adjusted["todo"] == 1
    assert adjusted["samples_per_second"] == [12.0]
    assert kinds["adjust"]["source"].startswith("assumed") and kinds["adjust"]["gpu_hours"] == pytest.approx(0.5)
    assert kinds["nli/original (all languages)"]["gpu_hours"] == pytest.approx(1.0)
    assert est["gpu_hours"] == pytest.approx(0.5 + 1.0 + 1.0 + 2 * adjusted["hours_per_step"])
    assert "measured" in format_estimate(est) and "assumed (config est_hours)" in format_estimate(est)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert grid_main([str(path), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "# nli/adjusted/es/seed0 [done]" in out and "# nli/adjusted/es/seed1 [to run]" in out
    assert "GPU-hours" in out and not (tmp_path / "results" / "plan.json").exists()  # a dry run writes nothing
    # --only: the chosen steps and their unfinished dependencies
    assert grid_main([str(path), "--dry_run", "--only", "nli/adjusted_cont/*/seed1"]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^# (\S+)", out, re.M) == ["adjust/es/seed1", "nli/adjusted_cont/es/seed1"]


# --- the real thing, small: tiny BERT, 2 seeds, NLI, es, local executor ------------------------------

def grid_yaml(tmp_path, model, results, seeds):
    nli = write_nli(tmp_path / "xnli")
    cfg = {"model_name_or_path": model, "results_dir": str(results), "languages": ["es"], "seeds": seeds,
           "regimes": ["original", "adjusted", "adjusted_cont"],
           "parallel": {"es": write_parallel(tmp_path / "en-es.txt")}, "workdir": str(ROOT),
           "adjust": {"args": {"per_device_train_batch_size": 8}, "resources": {"gpus": 0, "hours": 0.5}},
           "common_args": {"use_cpu": True, "report_to": "none", "disable_tqdm": True},
           "tasks": {"nli": {"args": {"train_file": str(nli / "train-en.tsv"),
                                      "test_file_pattern": str(nli / "test-{lang}.tsv"), "num_train_epochs": 1,
                                      "per_device_train_batch_size": 16, "save_strategy": "steps", "save_steps": 2},
                             "resources": {"gpus": 0, "hours": 0.5}}},
           "env": OFFLINE}
    path = tmp_path / f"{results.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def run_grid(config, *extra, **kwargs):
    return subprocess.run([sys.executable, "-m", "hf_xladjust.experiments", config, *extra], cwd=ROOT,
                          env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=900, **kwargs)


def metrics(path, resumed=False):
    """all_results.json without timings (and without train_loss after a resume: the Trainer averages it
    over the steps run since the resume only)."""
    data = json.loads(Path(path).read_text())
    drop = ("_runtime", "_per_second") + (("train_loss",) if resumed else ())
    return {k: v for k, v in data.items() if not k.endswith(drop)}


def kill_when_checkpointed(config, target):
    """Start the grid and SIGKILL it (grid, submitit controller and training alike) once `target` has a
    complete checkpoint; True if it was killed."""
    proc = subprocess.Popen([sys.executable, "-m", "hf_xladjust.experiments", config], cwd=ROOT,
                            env={**os.environ, **OFFLINE}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline, killed = time.time() + 900, False
    try:
        while time.time() < deadline and proc.poll() is None:
            if glob.glob(str(target / "checkpoint-*" / "trainer_state.json")):
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return killed


@pytest.mark.slow
def test_tiny_grid_end_to_end_kill_and_resume(tmp_path, tiny_model_dir):
    """One command runs the grid (tiny BERT, 2 seeds, NLI, es, local executor); killed while a fine-tuning
    has a checkpoint, the same command completes it (resuming that run) and ends with the results of an
    uninterrupted run; a third call runs nothing; the report prints the table."""
    results = tmp_path / "results"
    config = grid_yaml(tmp_path, tiny_model_dir, results, 2)
    target = results / "nli/adjusted/es/seed0"
    assert kill_when_checkpointed(config, target)
    assert not (target / SUCCESS).exists() and (results / "adjust/es/seed1" / SUCCESS).exists()
    assert not (results / "nli/adjusted_cont/es/seed1" / "_STARTED.json").exists()  # not begun

    proc = run_grid(config)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[resumed]  nli/adjusted/es/seed0" in proc.stdout and "Summary: 5 done, 3 ran, 1 resumed" in proc.stdout
    steps = ["align/es", "adjust/es/seed0", "adjust/es/seed1"] + [
        f"nli/{r}/{lang}/seed{s}" for r, lang in (("original", "all"), ("adjusted", "es"), ("adjusted_cont", "es"))
        for s in (0, 1)]
    for name in steps:
        assert (results / name / SUCCESS).is_file()
    assert "test_mixed_es_accuracy" in json.loads((results / "nli/original/es/seed1/all_results.json").read_text())

    t0 = time.time()
    again = run_grid(config)
    assert again.returncode == 0 and "Summary: 9 done" in again.stdout and "[run]" not in again.stdout
    assert time.time() - t0 < 30

    report = subprocess.run([sys.executable, "-m", "hf_xladjust.report", str(results)], cwd=ROOT,
                            env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "| Original |" in report.stdout and "| Adj + cont |" in report.stdout
    assert (results / "report" / "report.json").is_file()

    # The killed and resumed run against the same step run again from scratch, uninterrupted.
    resumed = {name: (target / name).read_bytes() for name in os.listdir(target)
               if name.startswith("predictions_") or name in ("all_results.json", "model.safetensors")}
    proc = run_grid(config, "--rerun", "nli/adjusted/es/seed0")
    assert proc.returncode == 0 and re.findall(r"\[ran\]\s+(\S+)", proc.stdout) == ["nli/adjusted/es/seed0"]
    assert json.loads((target / SUCCESS).read_text())["resumed_from"] is None
    for name, content in resumed.items():
        if name == "all_results.json":
            assert metrics(target / name, resumed=True) == {k: v for k, v in json.loads(content).items()
                                                            if not k.endswith(("_runtime", "_per_second",
                                                                               "train_loss"))}
        else:
            assert (target / name).read_bytes() == content, name


# --- checks before anything runs ------------------------------------------------------------------

@pytest.mark.parametrize("where, change, message", [
    ("tasks.nli.args", {"tasks": {"nli": {"args": {"num_trian_epochs": 1}}}},
     "step nli/original/all/seed0: run_glue_xl.py has no argument 'num_trian_epochs' (did you mean "
     "num_train_epochs?) (key num_trian_epochs in tasks.nli.args)"),
    ("regime_args", {"tasks": {"nli": {"regime_args": {"adjusted_cont": {"align_wieght": 0.1}}}}},
     "step nli/adjusted_cont/es/seed0: run_glue_xl.py has no argument 'align_wieght' (did you mean align_weight?) "
     "(key align_wieght in tasks.nli.regime_args.adjusted_cont)"),
    ("adjust.args", {"adjust": {"args": {"max_sentence": 10}}},
     "step adjust/es/seed0: run_adjust.py has no argument 'max_sentence'"),
    ("a value", {"tasks": {"nli": {"args": {"max_predict_samples": "many"}}}},
     "run_glue_xl.py refuses its arguments: argument --max_predict_samples/--max-predict-samples: invalid int value"),
])
def test_dry_run_checks_every_steps_arguments_against_its_script(tmp_path, where, change, message):
    cfg = base_config(tmp_path)
    for key, value in change.items():
        if key == "tasks":
            for section, extra in value["nli"].items():
                cfg["tasks"]["nli"].setdefault(section, {}).update(extra)
        else:
            cfg[key]["args"].update(value["args"])
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(InputError, match=re.escape(message)):
        grid_main([str(path), "--dry_run"])
    with pytest.raises(InputError, match=re.escape(message)):  # the real run checks first, and runs nothing
        grid_main([str(path)])
    assert not (tmp_path / "results").exists()


def test_dry_run_reports_a_missing_model_and_passes_a_good_config(tmp_path, capsys):
    cfg = base_config(tmp_path)
    cfg["tasks"]["nli"]["args"]["bf16"] = True  # only the flags are parsed: a GPU option checks on a CPU machine
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert grid_main([str(path), "--dry_run"]) == 0
    assert "# nli/adjusted_cont/ru/seed1 [to run]" in capsys.readouterr().out
    for model in (str(tmp_path / "gone"), "./models/gone"):
        path.write_text(yaml.safe_dump({**cfg, "model_name_or_path": model}))
        with pytest.raises(InputError, match="model_name_or_path: no model folder .*gone"):
            grid_main([str(path), "--dry_run"])
    path.write_text(yaml.safe_dump({**cfg, "model_name_or_path": "someone/not-cached", "env": OFFLINE}))
    with pytest.raises(InputError, match="'someone/not-cached' is neither a folder nor in the Hub cache"):
        grid_main([str(path), "--dry_run"])


def test_a_misspelled_argument_is_one_line_from_the_command(tmp_path):
    cfg = base_config(tmp_path)
    cfg["tasks"]["nli"]["args"]["num_trian_epochs"] = 1
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = run_grid(str(path), "--dry_run")
    assert done.returncode == 1 and "# nli/adjusted_cont/ru/seed1 [to run]" in done.stdout  # the plan, then
    assert done.stderr.count("\n") == 1 and "has no argument 'num_trian_epochs'" in done.stderr  # the problem
    assert not (tmp_path / "results").exists()
    done = run_grid(str(path))  # the real run checks first, and plans nothing
    assert done.returncode == 1 and "Grid" not in done.stdout  # (transformers may print)
    assert done.stderr.count("\n") == 1 and "has no argument 'num_trian_epochs'" in done.stderr


def test_task_regimes_choose_a_subset(tmp_path):
    """Retrieval of the encoders themselves (model_from start) runs in a grid with continual regimes when
    the task names its regimes; retrieval of a task's models runs them all."""
    cfg = base_config(tmp_path, regimes=["original", "adjusted", "adjusted_cont"], seeds=[0])
    cfg["tasks"]["xsr"] = {"regimes": ["original", "adjusted"], "args": {"tatoeba_dir": str(tmp_path)}}
    cfg["tasks"]["xsr_nli"] = {"script": "run_xsr.py", "trains": False, "language_arg": "languages",
                               "model_from": "nli", "args": {"tatoeba_dir": str(tmp_path)}}
    names = [s.name for s in build_plan(parse_config(cfg, "g.yaml"))]
    assert [n for n in names if n.startswith("xsr/")] == ["xsr/original/all/seed0", "xsr/adjusted/es/seed0",
                                                         "xsr/adjusted/ru/seed0"]
    assert len([n for n in names if n.startswith("xsr_nli/")]) == 5
    cfg["tasks"]["xsr"]["regimes"] = ["original", "original_cont"]
    with pytest.raises(InputError, match=re.escape("tasks.xsr.regimes: ['original_cont'] not among")):
        parse_config(cfg, "g.yaml")
    cfg["tasks"]["xsr"]["regimes"] = None
    with pytest.raises(InputError, match="evaluation-only task has no continual regime"):
        parse_config(cfg, "g.yaml")


def test_the_e5_offline_grid_plans_on_the_shared_data(tmp_path, shared_data, tiny_model_dir, capsys):
    """examples/grid_e5_offline.yaml: every step's arguments pass its script's parser and every input file
    exists (a tiny model stands in for the converted e5-small folder)."""
    cfg = yaml.safe_load((ROOT / "examples" / "grid_e5_offline.yaml").read_text())
    cfg.update(model_name_or_path=str(tiny_model_dir), results_dir=str(tmp_path / "results"), workdir=str(ROOT))
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert grid_main([str(path), "--dry_run"]) == 0
    out = capsys.readouterr().out
    names = re.findall(r"^# (\S+) \[to run\]", out, re.M)
    seeds = len(cfg["seeds"]) if isinstance(cfg["seeds"], list) else cfg["seeds"]
    per_seed = {"align": 0, "adjust": 4, "nli": 9, "ner": 9, "xsr": 5, "xsr_nli": 9}
    assert {k: sum(n.split("/")[0] == k for n in names) for k in per_seed} == {
        k: 4 if k == "align" else v * seeds for k, v in per_seed.items()}
    steps = build_plan(load_config(str(path)))
    inputs = {os.path.relpath(os.path.join(ROOT, p), shared_data) for s in steps for p in s.inputs}
    assert {"xnli/test-hi.tsv", "xnli/test-en.tsv", "wikiann/dev-hi.tsv", "tatoeba"} <= inputs


def test_the_e5_regimes_grid_plans_on_the_shared_data(tmp_path, shared_data, tiny_model_dir, capsys):
    """examples/grid_e5_regimes_offline.yaml (docs/results/e5-small-regimes.md): its 40 steps pass their
    parsers, with every input file there."""
    cfg = yaml.safe_load((ROOT / "examples" / "grid_e5_regimes_offline.yaml").read_text())
    cfg.update(model_name_or_path=str(tiny_model_dir), results_dir=str(tmp_path / "results"), workdir=str(ROOT))
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert grid_main([str(path), "--dry_run"]) == 0
    names = re.findall(r"^# (\S+) \[to run\]", capsys.readouterr().out, re.M)
    assert len(names) == 40
    assert {n.split("/")[0] for n in names} == {"align", "adjust", "adjust_n500", "transform", "xsr"}
    assert len([n for n in names if n.startswith(("xsr/rotation/", "xsr/normalized/"))]) == 8



REALIGN_SPLIT = (  # the two grid processes of docs/results/e5-small-realign.md, as the yaml's header gives them
    ["adjust/es/*", "adjust_frozen/es/*", "nli/original/*", "nli/*/es/*", "xsr_nli/original/*", "xsr_nli/*/es/*",
     "xsr/adjusted/es/*", "xsr/adjusted_frozen/es/*"],
    ["adjust_lora/*", "adjust_sentence/*", "adjust/hi/*", "adjust_frozen/hi/*", "xsr/original/*", "xsr/*/hi/*",
     "xsr/adjusted_lora/es/*", "xsr/adjusted_sentence/es/*"])


def test_the_e5_realign_grid_plans_on_the_shared_data(tmp_path, shared_data, tiny_model_dir, capsys):
    """examples/grid_e5_realign_offline.yaml (docs/results/e5-small-realign.md): its 56 steps pass their
    parsers with every input file there; each realignment regime gets its own run_adjust.py flags; the two
    --only commands of its header cover every step but the Hindi NLI runs, and no step twice."""
    import fnmatch
    text = (ROOT / "examples" / "grid_e5_realign_offline.yaml").read_text()
    cfg = yaml.safe_load(text)
    cfg.update(model_name_or_path=str(tiny_model_dir), results_dir=str(tmp_path / "results"), workdir=str(ROOT))
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert grid_main([str(path), "--dry_run"]) == 0
    names = re.findall(r"^# (\S+) \[to run\]", capsys.readouterr().out, re.M)
    kinds = {k: sum(n.split("/")[0] == k for n in names)
             for k in ("align", "adjust", "adjust_lora", "adjust_sentence", "adjust_frozen", "nli", "xsr", "xsr_nli")}
    # per seed: 4 adjustments of each kind over es+hi; nli and xsr_nli 1 original + 2 regimes x 2 languages;
    # xsr 1 original + 4 regimes x 2 languages
    assert kinds == {"align": 2, "adjust": 4, "adjust_lora": 4, "adjust_sentence": 4, "adjust_frozen": 4,
                     "nli": 10, "xsr": 18, "xsr_nli": 10} and len(names) == 56
    by = {s.name: s for s in build_plan(load_config(str(path)))}
    assert argmap(by["adjust_sentence/hi/seed1"])["align_level"] == ["sentence"]
    assert argmap(by["adjust_sentence/hi/seed1"])["align_layer"] == ["6"]
    assert argmap(by["adjust_lora/es/seed0"])["lora_r"] == ["8"]
    assert argmap(by["adjust_frozen/es/seed0"])["freeze_layers"] == ["lower"]
    assert "lora_r" not in argmap(by["adjust/es/seed0"]) and "align_level" not in argmap(by["adjust/es/seed0"])
    assert argmap(by["nli/adjusted_frozen/es/seed0"])["bf16"] == ["true"]
    assert argmap(by["xsr_nli/adjusted_frozen/es/seed0"])["model_name_or_path"] == [
        str(tmp_path / "results" / "nli" / "adjusted_frozen" / "es" / "seed0")]
    inputs = {os.path.relpath(os.path.join(ROOT, p), shared_data) for s in by.values() for p in s.inputs}
    assert {"xnli/test-es.tsv", "xnli/dev-en.tsv", "tatoeba"} <= inputs
    chosen = []
    for patterns in REALIGN_SPLIT:
        assert " ".join(f"'{p}'" for p in patterns) in text  # the header's commands are these
        chosen += [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    assert len(chosen) == len(set(chosen))
    assert sorted(set(names) - set(chosen) - {"align/es", "align/hi"}) == sorted(
        f"{t}/{r}/hi/seed{s}" for t in ("nli", "xsr_nli") for r in ("adjusted", "adjusted_frozen") for s in (0, 1))

# --- the regimes of issue 12: adjusted_multi, adjusted_n{size}, rotation, normalized ---------------

NEW_REGIMES = ["original", "adjusted", "adjusted_multi", "rotation", "normalized"]
TRANSFORMS = ["-m", "hf_xladjust.evaluation.transforms"]


def new_regimes_config(tmp_path, **over):
    """es and ru, 2 seeds, every new regime, parallel_sizes [10, 5]; nli trains, xsr evaluates the start model
    (original, rotation) and xsr_nli the NLI models (original, normalized)."""
    cfg = base_config(tmp_path, regimes=list(NEW_REGIMES), parallel_sizes=[10, 5], **over)
    cfg["tasks"]["xsr"] = {"regimes": ["original", "rotation"], "args": {"tatoeba_dir": str(tmp_path)}}
    cfg["tasks"]["xsr_nli"] = {"script": "run_xsr.py", "trains": False, "language_arg": "languages",
                               "model_from": "nli", "regimes": ["original", "normalized"],
                               "args": {"tatoeba_dir": str(tmp_path)}}
    cfg["transform"] = {"args": {"per_device_batch_size": 8}, "resources": {"gpus": 1, "est_hours": 0.1}}
    return cfg


def test_new_regimes_steps_commands_and_dependencies(tmp_path):
    steps = build_plan(parse_config(new_regimes_config(tmp_path), "grid.yaml"))
    by = {s.name: s for s in steps}
    names = list(by)
    res, model = str(tmp_path / "results"), str(tmp_path / "model")
    corpus = str(tmp_path / "en-es.txt")
    for i, s in enumerate(steps):  # dependencies always come first, and exist
        assert all(names.index(d) < i for d in s.deps), s.name

    # parallel_sizes: adjust_n{size}/{lang}/seed{n} with max_sentences = size, smallest size first
    assert [n for n in names if n.startswith("adjust_n") and n.endswith("/es/seed0")] == [
        "adjust_n5/es/seed0", "adjust_n10/es/seed0"]
    sized = argmap(by["adjust_n10/ru/seed1"])
    assert sized["max_sentences"] == ["10"] and sized["seed"] == ["1"]
    assert sized["output_dir"] == [f"{res}/adjust_n10/ru/seed1"] and sized["target_lang"] == ["ru"]
    assert sized["alignment_file"] == [f"{res}/align/ru/alignment.pharaoh"] and sized["aligner"] == ["pharaoh"]
    assert by["adjust_n10/ru/seed1"].deps == ["align/ru"] and by["adjust_n10/ru/seed1"].script == ["run_adjust.py"]
    assert argmap(by["adjust/ru/seed1"])["max_sentences"] == ["30"]  # the adjusted regime keeps its own
    task = by["nli/adjusted_n5/es/seed1"]
    assert argmap(task)["model_name_or_path"] == [f"{res}/adjust_n5/es/seed1"] and task.deps == ["adjust_n5/es/seed1"]
    assert argmap(task)["eval_languages"] == ["es"] and task.resume
    # ... and the tasks that run `adjusted` run them (xsr_nli lists only original and normalized: not it)
    assert not [n for n in names if n.startswith(("xsr/adjusted", "xsr_nli/adjusted"))]

    # adjusted_multi: one run_adjust.py --parallel per seed over every language, from the shared alignments
    multi = by["adjust/multi/seed1"]
    m = argmap(multi)
    assert m["parallel"] == [f"es={corpus}", f"ru={corpus},{corpus}"]
    assert m["alignment_files"] == [f"es={res}/align/es/alignment.pharaoh", f"ru={res}/align/ru/alignment.pharaoh"]
    assert m["aligner"] == ["pharaoh"] and m["max_sentences"] == ["30"] and m["seed"] == ["1"]
    assert m["output_dir"] == [f"{res}/adjust/multi/seed1"] and multi.output_dir == f"{res}/adjust/multi/seed1"
    assert not {"target_lang", "source_lang", "train_file", "source_file", "alignment_file"} & set(m)
    assert multi.deps == ["align/es", "align/ru"] and multi.outputs == by["adjust/es/seed0"].outputs
    assert "adjust/multi/seed0" in names and "adjust/multi/seed2" not in names
    mt = by["nli/adjusted_multi/all/seed1"]
    assert argmap(mt)["model_name_or_path"] == [f"{res}/adjust/multi/seed1"] and mt.deps == ["adjust/multi/seed1"]
    assert argmap(mt)["eval_languages"] == ["es", "ru"] and mt.resume
    assert mt.links == [f"{res}/nli/adjusted_multi/es/seed1", f"{res}/nli/adjusted_multi/ru/seed1"]
    assert not [n for n in names if n.startswith("nli/adjusted_multi/") and "/all/" not in n]

    # rotation / normalized: a fit per (regime, model, language, seed) on the Original fine-tuned model...
    fit = by["transform/rotation/nli/es/seed1"]
    f = argmap(fit)
    assert fit.script == TRANSFORMS and fit.kind == "transform" and not fit.resume
    assert f["kind"] == ["rotation"] and f["model_name_or_path"] == [f"{res}/nli/original/all/seed1"]
    assert f["train_file"] == [corpus] and f["target_lang"] == ["es"] and f["max_sentences"] == ["30"]
    assert f["aligner"] == ["pharaoh"] and f["alignment_file"] == [f"{res}/align/es/alignment.pharaoh"]
    assert f["seed"] == ["1"] and f["output_dir"] == [f"{res}/transform/rotation/nli/es/seed1"]
    assert f["per_device_batch_size"] == ["8"] and "report_to" not in f  # transform.args, not common_args
    assert fit.deps == ["nli/original/all/seed1", "align/es"] and "representation_transform.pt" in fit.outputs
    assert argmap(by["transform/normalized/nli/ru/seed0"])["kind"] == ["normalize"]
    assert argmap(by["transform/normalized/nli/ru/seed0"])["source_file"] == [corpus]
    # ... then the task script, evaluation only, on that model through the fitted transform
    rot = by["nli/rotation/ru/seed0"]
    r = argmap(rot)
    assert r["model_name_or_path"] == [f"{res}/nli/original/all/seed0"] and r["do_train"] == ["false"]
    assert r["representation_transform"] == [f"{res}/transform/rotation/nli/ru/seed0"]
    assert r["eval_languages"] == ["ru"] and r["seed"] == ["0"] and r["do_predict"] == ["true"]
    assert r["output_dir"] == [f"{res}/nli/rotation/ru/seed0"] and rot.script == ["run_glue_xl.py"]
    assert rot.deps == ["nli/original/all/seed0", "transform/rotation/nli/ru/seed0"] and not rot.resume
    assert "per_device_train_batch_size" not in r  # no training: the paper's batch split does not apply
    # evaluation-only tasks: the start model (key `start`), or the Original models of model_from
    x = by["xsr/rotation/es/seed1"]
    assert argmap(x)["model_name_or_path"] == [model] and "do_train" not in argmap(x)
    assert argmap(x)["representation_transform"] == [f"{res}/transform/rotation/start/es/seed1"]
    assert x.deps == ["transform/rotation/start/es/seed1"]
    assert argmap(by["transform/rotation/start/es/seed1"])["model_name_or_path"] == [model]
    assert by["transform/rotation/start/es/seed1"].deps == ["align/es"]
    xn = by["xsr_nli/normalized/ru/seed1"]
    assert argmap(xn)["model_name_or_path"] == [f"{res}/nli/original/all/seed1"]
    assert argmap(xn)["representation_transform"] == [f"{res}/transform/normalized/nli/ru/seed1"]  # nli's own fit
    assert xn.deps == ["nli/original/all/seed1", "transform/normalized/nli/ru/seed1"]
    fits = sorted(n for n in names if n.startswith("transform/"))
    assert fits == sorted(f"transform/{regime}/{key}/{lang}/seed{s}" for regime, key in
                          (("rotation", "nli"), ("normalized", "nli"), ("rotation", "start"))
                          for lang in ("es", "ru") for s in (0, 1))
    # per-language alignment mode: the multi run aligns each corpus itself
    cfg = new_regimes_config(tmp_path)
    cfg["alignment"] = {"mode": "per_run", "args": {"max_sentences": 30}}
    by = {s.name: argmap(s) for s in build_plan(parse_config(cfg, "grid.yaml"))}
    assert by["adjust/multi/seed0"]["aligner"] == ["eflomal"] and "alignment_files" not in by["adjust/multi/seed0"]
    assert by["transform/rotation/nli/es/seed0"]["aligner"] == ["eflomal"]


def test_new_regimes_fingerprints_and_dependents(tmp_path):
    base = new_regimes_config(tmp_path)
    fp0 = {s.name: s.fingerprint for s in build_plan(parse_config(base, "g.yaml"))}
    assert len(set(fp0.values())) == len(fp0)

    def plan(cfg):
        return {s.name: s.fingerprint for s in build_plan(parse_config(cfg, "g.yaml"))}

    # changing one size: that size's steps go (and the new size's come); no other fingerprint moves
    cfg = json.loads(json.dumps(base))
    cfg["parallel_sizes"] = [12, 5]
    fp = plan(cfg)
    gone, new = sorted(set(fp0) - set(fp)), sorted(set(fp) - set(fp0))
    assert gone == sorted(n for n in fp0 if "adjust_n10/" in n or "/adjusted_n10/" in n)
    assert new == sorted(n.replace("n10", "n12") for n in gone)
    assert {n: fp[n] for n in fp0 if n in fp} == {n: v for n, v in fp0.items() if n in fp}
    # one size's own task arguments: only its task steps
    cfg = json.loads(json.dumps(base))
    cfg["tasks"]["nli"]["regime_args"] = {"adjusted_n5": {"learning_rate": 1e-5}}
    assert sorted(n for n, v in plan(cfg).items() if v != fp0[n]) == sorted(n for n in fp0
                                                                           if n.startswith("nli/adjusted_n5/"))
    # adjusted's task arguments go to the adjusted_n{size} runs as well (the same runs with fewer sentences)
    cfg["tasks"]["nli"]["regime_args"] = {"adjusted": {"learning_rate": 1e-5}}
    assert sorted(n for n, v in plan(cfg).items() if v != fp0[n]) == sorted(n for n in fp0
                                                                           if n.startswith("nli/adjusted_n")
                                                                           or n.startswith("nli/adjusted/"))
    # the fit's arguments: the fits and the evaluations through them
    cfg = json.loads(json.dumps(base))
    cfg["transform"]["args"]["per_device_batch_size"] = 16
    assert sorted(n for n, v in plan(cfg).items() if v != fp0[n]) == sorted(
        n for n in fp0 if n.startswith("transform/") or n.split("/")[1] in ("rotation", "normalized"))
    # a stage-1 argument: every adjustment (per language, per size, multi) and what starts from them
    cfg = json.loads(json.dumps(base))
    cfg["adjust"]["args"]["learning_rate"] = 1e-5
    assert sorted(n for n, v in plan(cfg).items() if v != fp0[n]) == sorted(
        n for n in fp0 if n.startswith(("adjust", "nli/adjusted")))
    # the Original NLI run: its fits, its transformed evaluations and the retrieval of its models
    steps = build_plan(parse_config(base, "g.yaml"))
    assert dependents(steps, ["nli/original/all/seed0"]) == [
        "nli/original/all/seed0", "transform/rotation/nli/es/seed0", "nli/rotation/es/seed0",
        "transform/rotation/nli/ru/seed0", "nli/rotation/ru/seed0", "transform/normalized/nli/es/seed0",
        "nli/normalized/es/seed0", "transform/normalized/nli/ru/seed0", "nli/normalized/ru/seed0",
        "xsr_nli/original/all/seed0", "xsr_nli/normalized/es/seed0", "xsr_nli/normalized/ru/seed0"]


@pytest.mark.parametrize("change, message", [
    ({"regimes": ["adjusted", "rotation"]},
     "tasks.nli: rotation is fitted on and applied to the Original fine-tuned models of nli; add original"),
    ({"regimes": ["original", "adjusted", "rotation", "normalized"],
      "tasks": {"nli": {"regimes": ["adjusted", "rotation", "normalized"]}}},
     "tasks.nli: rotation and normalized are fitted on and applied to the Original fine-tuned models of nli"),
    ({"tasks": {"nli": {"regimes": ["adjusted"]},
                "xsr_nli": {"script": "run_xsr.py", "trains": False, "model_from": "nli",
                            "regimes": ["adjusted", "rotation"]}}},
     "tasks.xsr_nli: rotation is fitted on and applied to the Original fine-tuned models of nli"),
    ({"tasks": {"qa": {}}}, "tasks.qa.regimes: QA does not support rotation"),
    ({"tasks": {"qa2": {"script": "run_qa_xl.py", "regimes": ["original", "rotation"]}}},
     "tasks.qa2.regimes: QA does not support rotation"),
    ({"parallel_sizes": [5, 0]}, "parallel_sizes: a list of positive sentence counts"),
    ({"parallel_sizes": [-5]}, "parallel_sizes: a list of positive sentence counts"),
    ({"parallel_sizes": 5000}, "parallel_sizes: a list of positive sentence counts"),
    ({"parallel_sizes": [True]}, "parallel_sizes: a list of positive sentence counts"),
    ({"parallel_sizes": [5, 10, 5]}, "parallel_sizes: repeated size in [5, 10, 5]"),
    ({"parallel_sizes": [30]}, "parallel_sizes: 30 is the max_sentences of the adjusted regime itself"),
    ({"parallel_sizes": [5], "regimes": ["original", "rotation"]}, "the adjusted_n{size} regimes go with adjusted"),
    ({"regimes": ["original", "adjusted_n5000"]}, "regimes: adjusted_n5000 is not listed; give its size in "
                                                  "parallel_sizes: [5000]"),
    ({"regimes": ["original", "rotated"]}, "unknown regime 'rotated'; choose from original, adjusted, "
                                           "adjusted_multi, adjusted_cont, original_cont, rotation, normalized"),
    ({"tasks": {"nli": {"regime_args": {"adjusted_n7": {"learning_rate": 1}}}}},
     "tasks.nli.regime_args: unknown regime 'adjusted_n7'"),
    ({"adjust": {"regime_resources": {"adjusted_n7": {"hours": 1}}}},
     "adjust.regime_resources: 'adjusted_n7' is not adjusted_multi or an adjusted_n{size}"),
    ({"adjust": {"regime_resources": {"adjusted_multi": {"gpu": 2}}}},
     "unknown key(s) gpu in adjust.regime_resources.adjusted_multi"),
    ({"languages": ["es", "multi"]}, "languages: expected language codes"),
    ({"transform": {"modul": "x"}}, "unknown key(s) modul in transform"),
])
def test_new_regime_config_errors(tmp_path, change, message):
    cfg = base_config(tmp_path, regimes=["original", "adjusted", "rotation"], parallel_sizes=[5])
    for key, value in change.items():
        if key == "tasks":
            for name, settings in value.items():
                cfg["tasks"].setdefault(name, {}).update(settings)
        else:
            cfg[key] = value
    with pytest.raises(InputError) as err:
        parse_config(cfg, "grid.yaml")
    assert str(err.value).startswith("grid.yaml: ") and message in str(err.value)


def test_multi_adjustment_refuses_what_parallel_cannot_say(tmp_path):
    cfg = base_config(tmp_path, regimes=["original", "adjusted_multi"])
    cfg["alignment"]["args"]["target_lang"] = "en"  # the paper's 'xx ||| en' files: english_side instead
    with pytest.raises(InputError, match="alignment.args: adjusted_multi runs run_adjust.py --parallel, which names "
                                         "each corpus's language itself; remove target_lang"):
        build_plan(parse_config(cfg, "grid.yaml"))
    cfg = base_config(tmp_path, regimes=["original", "adjusted_multi"])
    cfg["parallel"]["ru"] = {"source_file": "a,b.en", "target_file": "b.ru"}
    with pytest.raises(InputError, match="parallel.ru: adjusted_multi passes --parallel ru=SOURCE,TARGET"):
        build_plan(parse_config(cfg, "grid.yaml"))


@pytest.mark.parametrize("args, message", [({"kind": "normalize"}, "transform.args: the grid sets kind itself"),
                                           ({"seed": 3}, "transform.args: the grid sets seed itself")])
def test_the_grid_sets_the_fit_kind_and_seed(tmp_path, args, message):
    cfg = new_regimes_config(tmp_path)
    cfg["transform"]["args"] = args
    with pytest.raises(InputError, match=message):
        build_plan(parse_config(cfg, "grid.yaml"))


def test_new_regimes_estimate_kinds(tmp_path):
    cfg = new_regimes_config(tmp_path)
    cfg["adjust"]["regime_resources"] = {"adjusted_multi": {"est_hours": 1.0, "hours": 4}}
    steps = build_plan(parse_config(cfg, "g.yaml"))
    assert next(s for s in steps if s.name == "adjust/multi/seed0").resources.hours == 4
    kinds = estimate(steps)["kinds"]
    assert kinds["adjust (adjusted_multi)"]["steps"] == 2 and kinds["adjust (adjusted_multi)"]["gpu_hours"] == 2.0
    assert kinds["adjust (adjusted_n5)"]["steps"] == 4 and kinds["adjust (adjusted_n5)"]["hours_per_step"] == 0.25
    assert kinds["adjust"]["steps"] == 4  # the one-language runs at the full size
    rotation = kinds["transform (rotation)"]
    assert rotation["steps"] == 8 and rotation["gpu_hours"] == pytest.approx(0.8)
    assert kinds["transform (normalized)"]["steps"] == 4
    assert kinds["nli/rotation (one language)"]["steps"] == 4
    assert kinds["nli/adjusted_multi (all languages)"]["steps"] == 2
    assert "| transform (rotation) | 8 | 8 | 1 |" in format_estimate(estimate(steps))


def transform_stub(tmp_path):
    """Stands in for `python -m hf_xladjust.evaluation.transforms`: records its arguments, writes the
    contract's outputs (representation_transform.pt, run_args.json last)."""
    stub = tmp_path / "toy_transform.py"
    stub.write_text(textwrap.dedent('''
        import json, os, sys
        out = sys.argv[sys.argv.index("--output_dir") + 1]
        os.makedirs(out, exist_ok=True)
        open(os.path.join(out, "representation_transform.pt"), "wb").write(b"stub")
        json.dump(sys.argv[1:], open(os.path.join(out, "run_args.json"), "w"))
    '''))
    return str(stub)


def test_local_executor_grid_with_the_new_regimes(tmp_path, capsys):
    """Every new regime through submitit's local executor with trainer-like scripts (a stub for the
    transform fit): all steps run once in dependency order, the shared runs' links are made, a rerun
    runs nothing, and `--only` picks a transformed evaluation with its fit and its Original run."""
    cfg = toy_config(tmp_path, tmp_path / "no-crash")
    cfg.update(regimes=list(NEW_REGIMES), parallel_sizes=[20], seeds=[0])
    cfg["transform"] = {"script": transform_stub(tmp_path), "resources": {"gpus": 0}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert grid_main([str(path), "--dry_run", "--only", "nli/rotation/*"]) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^# (\S+)", out, re.M) == ["nli/original/all/seed0", "transform/rotation/nli/es/seed0",
                                                 "nli/rotation/es/seed0"]
    assert "# transform/rotation/nli/es/seed0 [to run] fingerprint " in out
    assert "(after nli/original/all/seed0)" in out and "| transform (rotation) | 1 | 1 | 0 |" in out

    assert grid_main([str(path)]) == 0
    out = capsys.readouterr().out
    ran = re.findall(r"\[ran\]\s+(\S+)", out)
    assert ran == ["adjust/es/seed0", "adjust_n20/es/seed0", "adjust/multi/seed0", "nli/original/all/seed0",
                   "nli/adjusted/es/seed0", "nli/adjusted_n20/es/seed0", "nli/adjusted_multi/all/seed0",
                   "transform/rotation/nli/es/seed0", "nli/rotation/es/seed0",
                   "transform/normalized/nli/es/seed0", "nli/normalized/es/seed0"]
    res = tmp_path / "results"
    assert os.readlink(res / "nli" / "adjusted_multi" / "es" / "seed0") == "../all/seed0"
    fit_args = json.loads((res / "transform/normalized/nli/es/seed0/run_args.json").read_text())
    assert fit_args[fit_args.index("--kind") + 1] == "normalize"
    assert fit_args[fit_args.index("--model_name_or_path") + 1] == str(res / "nli/original/all/seed0")
    calls = json.loads((res / "nli/rotation/es/seed0/calls.jsonl").read_text().splitlines()[0])
    assert calls[calls.index("--representation_transform") + 1] == str(res / "transform/rotation/nli/es/seed0")
    assert calls[calls.index("--do_train") + 1] == "false" and "--resume_from_checkpoint" not in calls
    multi = json.loads((res / "adjust/multi/seed0/calls.jsonl").read_text().splitlines()[0])
    assert multi[multi.index("--parallel") + 1] == f"es={tmp_path / 'en-es.txt'}"
    assert multi[multi.index("--alignment_files") + 1] == f"es={tmp_path / 'es.pharaoh'}"
    assert grid_main([str(path)]) == 0
    assert "Summary: 11 done" in capsys.readouterr().out
    # a new size runs its own two steps, nothing else
    cfg["parallel_sizes"] = [20, 10]
    path.write_text(yaml.safe_dump(cfg))
    assert grid_main([str(path)]) == 0
    assert re.findall(r"\[ran\]\s+(\S+)", capsys.readouterr().out) == ["adjust_n10/es/seed0",
                                                                       "nli/adjusted_n10/es/seed0"]


def test_dry_run_checks_the_fit_steps(tmp_path, monkeypatch, capsys):
    """The fit steps' flags are those of the contract's CLI; a module without build_parser() is not checked
    (as a script without one), a module that does not exist is an error naming the step."""
    import types

    from hf_xladjust.experiments import validate

    cfg = new_regimes_config(tmp_path)
    path = tmp_path / "grid.yaml"
    only = ["--dry_run", "--only", "transform/*"]
    fake = types.ModuleType("fit_without_a_parser")
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setattr(validate, "_PARSERS", {})
    path.write_text(yaml.safe_dump({**cfg, "transform": {**cfg["transform"], "module": fake.__name__,
                                                         "args": {"no_such_flag": 1}}}))
    assert grid_main([str(path)] + only) == 0  # no build_parser: not checked
    assert "# transform/normalized/nli/ru/seed1 [to run]" in capsys.readouterr().out

    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(validate, "_PARSERS", {})
    assert grid_main([str(path)] + only) == 0  # every fit step's flags parse
    capsys.readouterr()
    cfg["transform"]["args"] = {"per_device_batch_sise": 8}
    path.write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr(validate, "_PARSERS", {})
    with pytest.raises(InputError, match=re.escape(
            "step transform/rotation/nli/es/seed0: hf_xladjust.evaluation.transforms has no argument "
            "'per_device_batch_sise' (did you mean per_device_batch_size?) (key per_device_batch_sise in "
            "transform.args)")):
        grid_main([str(path)] + only)
    cfg["transform"] = {"module": "hf_xladjust.evaluation.no_such_fit"}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(InputError, match=re.escape("step transform/rotation/nli/es/seed0: no module "
                                                   "hf_xladjust.evaluation.no_such_fit")):
        grid_main([str(path)] + only)


def test_new_regime_steps_pass_the_real_parsers(tmp_path, capsys):
    """Once the transform CLI and the scripts' --representation_transform are there (branch i12-transforms),
    every step of a grid with every new regime passes its script's own parser (and finds its input files)."""
    from test_xsr import write_tatoeba

    write_tatoeba(tmp_path)  # the configuration's tatoeba_dir
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(new_regimes_config(tmp_path)))
    assert grid_main([str(path), "--dry_run"]) == 0
    assert "# xsr_nli/normalized/ru/seed1 [to run]" in capsys.readouterr().out


@pytest.mark.slow
def test_tiny_grid_with_every_new_regime_prints_one_table_with_p_values(tmp_path, tiny_model_dir):
    """The real scripts on tiny BERT, es and ru, one seed, every new regime: adjusted_multi (run_adjust.py
    --parallel over the shared alignments), parallel_sizes [16], rotation and normalized (fitted on the
    Original NLI models, and on the start model for retrieval); the report prints one table per task with
    every row, and under it the p-values behind its marks."""
    from test_xsr import write_tatoeba

    nli = write_nli(tmp_path / "xnli")
    en, ru = fixture_lines("en"), fixture_lines("ru")
    (nli / "test-ru.tsv").write_text("".join(f"{ru[(i + 5) % 12]}\t{ru[(i * 5 + 6) % 12]}\t{LABELS[i % 3]}\n"
                                             for i in range(24)), encoding="utf-8")
    (tmp_path / "en-ru.txt").write_text("".join(f"{en[i]} {en[(i + k) % 12]} ||| {ru[i]} {ru[(i + k) % 12]}\n"
                                                for k in range(1, 5) for i in range(12)), encoding="utf-8")
    results = tmp_path / "results"
    small = {"gpus": 0, "hours": 0.5}
    regimes = ["original", "adjusted", "adjusted_multi", "rotation", "normalized"]
    cfg = {"model_name_or_path": tiny_model_dir, "results_dir": str(results), "languages": ["es", "ru"],
           "seeds": [0], "regimes": regimes, "parallel_sizes": [16],
           "parallel": {"es": write_parallel(tmp_path / "en-es.txt"), "ru": str(tmp_path / "en-ru.txt")},
           "workdir": str(ROOT), "alignment": {"args": {"max_sentences": 32}},
           "adjust": {"args": {"per_device_train_batch_size": 8}, "resources": small},
           "transform": {"args": {"per_device_batch_size": 8}, "resources": small},
           "common_args": {"use_cpu": True, "report_to": "none", "disable_tqdm": True},
           "tasks": {"nli": {"args": {"train_file": str(nli / "train-en.tsv"),
                                      "test_file_pattern": str(nli / "test-{lang}.tsv"), "num_train_epochs": 1,
                                      "per_device_train_batch_size": 16},
                             "resources": small},
                     "xsr": {"args": {"tatoeba_dir": str(write_tatoeba(tmp_path / "tatoeba")), "device": "cpu"},
                             "resources": small}},
           "env": OFFLINE}
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = run_grid(str(config))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stats = json.loads((results / "adjust/multi/seed0/alignment_stats.json").read_text())
    assert sorted(stats["languages"]) == ["es", "ru"]
    assert all(s["sentences_read"] == 32 for s in stats["languages"].values())  # max_sentences per language
    sized = json.loads((results / "adjust_n16/ru/seed0/alignment_stats.json").read_text())
    assert sized["sentences_read"] == 16
    assert "test_ru_accuracy" in json.loads((results / "nli/adjusted_multi/ru/seed0/all_results.json").read_text())
    # the transform runs evaluate the Original model with the fitted file on the target-language tokens
    rotated = json.loads((results / "nli/rotation/es/seed0/all_results.json").read_text())
    assert rotated["test_es_transformed_tokens"] > 0
    applied = json.loads((results / "nli/rotation/es/seed0/run_args.json").read_text())["representation_transform"]
    assert applied["kind"] == "rotation" and "transform/rotation/nli/es/seed0" in applied["path"]

    report = subprocess.run([sys.executable, "-m", "hf_xladjust.report", str(results)], cwd=ROOT,
                            env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    labels = ["Original", "Adjusted", "Adjusted (16 sent.)", "Adjusted (multi)", "Rotation", "Normalized"]
    tables = json.loads((results / "report" / "report.json").read_text())["tasks"]
    for task in ("nli", "xsr"):
        assert [row[0] for row in tables[task]["rows"]] == labels
    assert tables["nli"]["header"] == ["model", "en (es)", "en (ru)", "es", "ru", "mixed_es", "mixed_ru"]
    # printed: per task the table, then its p-values (vs Original / vs Adjusted) for every other row
    for rows in printed_p_values(report.stdout, tasks=2):
        for label in labels[2:]:
            assert any(re.fullmatch(r"[0-9.e-]+ / [0-9.e-]+", c) for c in rows[label]), rows[label]
