"""What the run_*.py scripts share (hf_xladjust/cli.py): one-line argument errors and the refusal to
retrain over a finished run."""
import importlib
import sys

import pytest

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
