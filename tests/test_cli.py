"""What the run_*.py scripts share (hf_xladjust/cli.py): one-line argument errors and the refusal to
retrain over a finished run."""
import importlib
import sys

import pytest
from conftest import free_port

from hf_xladjust.errors import InputError
from hf_xladjust.experiments.runner import LOCK, LOG, STARTED

# Each script, the file that marks a finished run in its --output_dir, and the least it needs to parse.
SCRIPTS = [
    ("run_adjust", "run_args.json", ["--train_file", "pairs.txt"]),
    ("run_glue_xl", "all_results.json", ["--do_train"]),
    ("run_ner_xl", "all_results.json", ["--do_train"]),
    ("run_qa_xl", "all_results.json", ["--do_train"]),
    ("run_xsr", "all_results.json", ["--tatoeba_dir", "tatoeba"]),
]


def run_script_main(monkeypatch, name, *args):
    """The script as its command line runs it (through run_main); returns the exit message."""
    script = importlib.import_module(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        script.run_main(script.main)
    return exit_info.value.code


@pytest.mark.parametrize("name, finished, args", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_rerun_into_a_finished_output_dir_is_refused(tmp_path, monkeypatch, name, finished, args):
    out = tmp_path / "out"
    out.mkdir()
    (out / finished).write_text("{}")
    message = run_script_main(monkeypatch, name, "--model_name_or_path", tmp_path / "no-model",
                              "--output_dir", out, *args)
    assert message == (f"{name}.py: error: {out}: holds a finished run ({finished}); pass "
                       "--overwrite_output_dir true to replace it, or choose another --output_dir")
    assert sorted(p.name for p in out.iterdir()) == [finished]  # nothing was written


@pytest.mark.parametrize("name, finished, args", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_overwrite_output_dir_is_a_flag_of_every_script(name, finished, args):
    parsed = importlib.import_module(name).build_parser().parse_args_into_dataclasses(
        ["--model_name_or_path", "m", "--output_dir", "out", *args, "--overwrite_output_dir", "true"])
    assert [getattr(p, "overwrite_output_dir") for p in parsed if hasattr(p, "overwrite_output_dir")] == [True]


def test_check_output_dir_lets_overwrite_resume_and_the_grid_through(tmp_path):
    from hf_xladjust.cli import check_output_dir

    out = tmp_path / "out"
    out.mkdir()
    # what the grid leaves in a step's folder before it runs the step's command: no refusal
    for name in (LOCK, STARTED, "command.sh", LOG):
        (out / name).write_text("")
    check_output_dir(str(out), "all_results.json", overwrite=False)
    check_output_dir(str(tmp_path / "missing"), "all_results.json", overwrite=False)
    (out / "all_results.json").write_text("{}")
    with pytest.raises(InputError, match=r"holds a finished run \(all_results.json\)") as err:
        check_output_dir(str(out), "all_results.json", overwrite=False)
    assert err.value.path == str(out)
    check_output_dir(str(out), "all_results.json", overwrite=True)
    check_output_dir(str(out), "all_results.json", overwrite=False, resume_from_checkpoint=str(out / "checkpoint-2"))


def test_make_grid_demo_builds_the_model_folder_that_grid_demo_yaml_names():
    """`make grid-demo` (dry run: nothing is executed) converts e5-small into the folder the config
    names, with the vocabulary of its corpus, then runs the grid and its report; the README says how
    to run things after `make install`."""
    import shutil
    import subprocess
    from pathlib import Path

    import yaml

    if shutil.which("make") is None:
        pytest.skip("no make")
    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "examples" / "grid_demo.yaml").read_text(encoding="utf-8"))
    model, corpus = cfg["model_name_or_path"], cfg["parallel"]["es"]
    proc = subprocess.run(["make", "-n", "-B", "grid-demo"], cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    convert = [ln for ln in lines if "-m hf_xladjust.offline_model" in ln]
    assert len(convert) == 1 and f"--output_dir {model}.tmp --vocab_corpus {corpus}" in convert[0]
    rest = lines[lines.index(convert[0]) + 1:]
    assert rest[0] == f"mv {model}.tmp {model}"
    assert any(ln.endswith("-m hf_xladjust.experiments examples/grid_demo.yaml") for ln in rest)
    assert any(ln.endswith(f"-m hf_xladjust.report {cfg['results_dir']}") for ln in rest)
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert "source .venv/bin/activate" in readme and "make grid-demo" in readme


# What torch runs the training with, read inside the script's own process when the Trainer starts: the
# script runs as `python run_adjust.py` does, with Trainer.train wrapped to print torch.get_num_threads().
THREADS_PROBE = """
import json, runpy, sys, torch, transformers
train = transformers.Trainer.train
def probe(self, *args, **kwargs):
    print("TORCH_THREADS=" + json.dumps(torch.get_num_threads()), flush=True)
    return train(self, *args, **kwargs)
transformers.Trainer.train = probe
sys.argv = ["run_adjust.py"] + sys.argv[1:]
runpy.run_path("run_adjust.py", run_name="__main__")
"""


def threads_in_training(tmp_path, model_dir, omp_num_threads=None):
    """(torch threads when training starts, run_args.json's `threads`) of a one-step CPU run_adjust.py."""
    import json
    import os
    import subprocess
    from pathlib import Path

    from conftest import FIXTURES, fixture_lines

    root = Path(__file__).resolve().parents[1]
    links = tmp_path / "links.txt"
    links.write_text("".join(" ".join(f"{k}-{k}" for k in range(min(len(a.split()), len(b.split())))) + "\n"
                             for a, b in zip(fixture_lines("en"), fixture_lines("es"))))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="disabled",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(root) + os.pathsep + env.get("PYTHONPATH", ""))
    if omp_num_threads is not None:
        env["OMP_NUM_THREADS"] = omp_num_threads
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", THREADS_PROBE, "--model_name_or_path", str(model_dir), "--source_file",
         str(FIXTURES / "en.txt"), "--target_file", str(FIXTURES / "es.txt"), "--target_lang", "es",
         "--aligner", "pharaoh", "--alignment_file", str(links), "--output_dir", str(out), "--max_steps", "1",
         "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads(line[len("TORCH_THREADS="):]) for line in proc.stdout.splitlines()
            if line.startswith("TORCH_THREADS=")]
    assert len(seen) == 1, proc.stdout[-2000:]
    return seen[0], json.loads((out / "run_args.json").read_text()).get("threads"), proc.stdout


def test_a_cpu_run_without_omp_num_threads_trains_on_one_thread(tmp_path, tiny_model_dir):
    """torch's own default is one thread per core, which made a tiny run on shared cores 9x slower
    (benchmarks/bench_threads.py); a CPU run with OMP_NUM_THREADS unset trains on one thread and says so."""
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: torch's default is one thread already")
    used, recorded, stdout = threads_in_training(tmp_path, tiny_model_dir)
    assert used == 1
    assert recorded == {"torch_threads": 1, "source": "hf_xladjust CPU default: 1", "OMP_NUM_THREADS": None,
                        "cores": len(os.sched_getaffinity(0))}
    assert stdout.count("CPU run: 1 torch thread(s)") == 1


def test_a_user_set_omp_num_threads_is_left_alone(tmp_path, tiny_model_dir):
    """2 is not the default (1); torch caps OMP_NUM_THREADS at the core count, so this needs two cores."""
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one core: torch caps OMP_NUM_THREADS=2 at 1, the default")
    used, recorded, stdout = threads_in_training(tmp_path, tiny_model_dir, omp_num_threads="2")
    assert used == 2
    assert recorded["torch_threads"] == 2 and recorded["source"] == "OMP_NUM_THREADS"
    assert recorded["OMP_NUM_THREADS"] == "2" and "CPU run:" not in stdout


def test_cpu_threads_follow_a_slurm_reservation_and_gpu_runs_keep_torchs_default(monkeypatch):
    import torch

    from hf_xladjust.cli import set_cpu_threads

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    try:
        torch.set_num_threads(5)
        assert set_cpu_threads("cuda")["torch_threads"] == 5  # not a CPU run: untouched
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes of one job share its 8 cores
        assert set_cpu_threads("cpu") == {"torch_threads": 4, "source": "hf_xladjust CPU default: SLURM_CPUS_PER_TASK",
                                          "OMP_NUM_THREADS": None, "cores": 8}
        monkeypatch.delenv("SLURM_CPUS_PER_TASK")
        assert set_cpu_threads("cpu")["torch_threads"] == 1
    finally:
        torch.set_num_threads(before)


def test_run_main_tears_the_process_group_down(monkeypatch):
    """A script's process group ends with its main(): a gloo group left to the interpreter's exit can abort the
    process that leaves first (SIGABRT after complete outputs, seen under `accelerate launch` in CI)."""
    import torch.distributed as dist

    from hf_xladjust.cli import run_main

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    ran = []
    run_main(lambda: (dist.init_process_group("gloo", rank=0, world_size=1), ran.append(dist.is_initialized())))
    assert ran == [True] and not dist.is_initialized()
    run_main(lambda: None)  # no group: nothing to do
