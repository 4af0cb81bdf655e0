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
