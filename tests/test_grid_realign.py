"""The grid's realignment regimes (issue 19.6): adjusted_lora / adjusted_sentence / adjusted_frozen plan their own
run_adjust.py steps with their flags (adjust.regime_args over the defaults), every step passes its script's real
parser, and (slow) a tiny grid runs them and the report prints their rows beside Adjusted with p-values."""
import importlib
import json
import os
import re
import subprocess
import sys

import pytest
import yaml
from test_experiments import (
    OFFLINE,
    ROOT,
    argmap,
    base_config,
    printed_p_values,
    run_grid,
    write_nli,
    write_parallel,
)

from hf_xladjust.errors import InputError
from hf_xladjust.experiments.__main__ import main as grid_main
from hf_xladjust.experiments.config import parse_config
from hf_xladjust.experiments.plan import build_plan

REALIGN = ["adjusted_lora", "adjusted_sentence", "adjusted_frozen"]


def realign_config(tmp_path):
    cfg = base_config(tmp_path, regimes=["original", "adjusted", *REALIGN, "adjusted_cont"])
    cfg["adjust"]["regime_args"] = {"adjusted_sentence": {"align_layer": 1, "align_temperature": 0.05},
                                    "adjusted_lora": {"lora_r": 4}}
    cfg["tasks"]["nli"]["regime_args"] = {"adjusted": {"learning_rate": 3e-5},
                                          "adjusted_cont": {"align_schedule": "alternate", "freeze_layers": "lower"}}
    cfg["tasks"]["nli"]["resources"] = {"gpus": 1, "hours": 1}  # alternate runs in one process
    return cfg


def test_realign_regimes_plan_their_own_adjustments(tmp_path):
    steps = build_plan(parse_config(realign_config(tmp_path), "grid.yaml"))
    by = {s.name: s for s in steps}
    res = str(tmp_path / "results")
    plain = argmap(by["adjust/ru/seed1"])
    assert not {"lora_r", "align_level", "freeze_layers", "merge_lora"} & set(plain)
    expected = {"adjust_lora": {"lora_r": ["4"], "merge_lora": ["true"]},  # r from regime_args, merge the default
                "adjust_sentence": {"align_level": ["sentence"], "align_layer": ["1"], "align_temperature": ["0.05"]},
                "adjust_frozen": {"freeze_layers": ["lower"]}}
    for folder, own in expected.items():
        step = by[f"{folder}/ru/seed1"]
        a = argmap(step)
        assert {k: a.get(k) for k in own} == own, folder
        # otherwise the adjusted regime's step: the same corpus, shared alignment, sample, epochs and seed
        assert {k: v for k, v in a.items() if k not in own and k != "output_dir"} == \
            {k: v for k, v in plain.items() if k != "output_dir"}
        assert a["output_dir"] == [f"{res}/{folder}/ru/seed1"] and step.deps == ["align/ru"]
        regime = "adjusted_" + folder[len("adjust_"):]
        assert step.regime == regime and step.script == ["run_adjust.py"]
        task = by[f"nli/{regime}/ru/seed1"]
        start = f"{res}/{folder}/ru/seed1" + ("/merged" if folder == "adjust_lora" else "")
        assert argmap(task)["model_name_or_path"] == [start] and task.deps == [f"{folder}/ru/seed1"]
        assert argmap(task)["learning_rate"] == ["3e-05"]  # adjusted's task arguments apply (inherited)
        assert "aligned_pairs" not in argmap(task)
    assert "merged/config.json" in by["adjust_lora/es/seed0"].outputs
    assert "adapter_config.json" in by["adjust_lora/es/seed0"].outputs
    assert "config.json" in by["adjust_frozen/es/seed0"].outputs
    cont = argmap(by["nli/adjusted_cont/es/seed0"])
    assert cont["align_schedule"] == ["alternate"] and cont["freeze_layers"] == ["lower"]


def test_realign_steps_pass_the_real_parsers(tmp_path, capsys):
    """Every step's flags through its script's parser: the grid's dry run (argparse level), and each
    realignment adjust step and continual task step through the dataclasses (their __post_init__ checks)."""
    path = tmp_path / "grid.yaml"
    cfg = realign_config(tmp_path)
    path.write_text(yaml.safe_dump(cfg))
    assert grid_main([str(path), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "# adjust_lora/ru/seed1 [to run]" in out and "# nli/adjusted_frozen/ru/seed1 [to run]" in out
    steps = build_plan(parse_config(cfg, str(path)))
    checked = 0
    for step in steps:
        if step.regime in REALIGN + ["adjusted_cont"] and step.script[0].endswith(".py"):
            parser = importlib.import_module(step.script[0][:-3]).build_parser()
            parsed = {type(p).__name__: p for p in parser.parse_args_into_dataclasses(step.args,
                                                                                      look_for_args_file=False)}
            realign = parsed["RealignmentArguments"]
            if step.regime == "adjusted_lora" and step.kind == "adjust":
                assert realign.lora_r == 4 and realign.merge_lora
            if step.regime == "adjusted_cont":
                assert parsed["ContinualAlignArguments"].align_schedule == "alternate"
            checked += 1
    assert checked == 2 * 2 * (3 * 2 + 1)  # languages x seeds x (3 adjust + 3 task steps, 1 continual task)


@pytest.mark.parametrize("change, message", [
    ({"regime_args": {"adjusted": {"lora_r": 8}}}, "adjust.regime_args: 'adjusted' is not a realignment regime"),
    ({"regime_args": {"adjusted_lora": {"merge_lora": False}}},
     "adjust.regime_args.adjusted_lora: needs lora_r > 0 and merge_lora true"),
    ({"regime_args": {"adjusted_frozen": {"lora_r": 8}}}, "adjust: adjusted_frozen with lora_r would be a LoRA"),
    ({"regime_args": {"adjusted_sentence": {"output_dir": "x"}}},
     "adjust.regime_args.adjusted_sentence: the grid sets output_dir itself"),
    ({"regime_resources": {"adjusted_lora": {"hours": 1}}, "regime_args": {"adjusted_lora": {"lora_r": 0}}},
     "needs lora_r > 0"),
])
def test_realign_config_errors(tmp_path, change, message):
    cfg = realign_config(tmp_path)
    cfg["adjust"].update(change)
    with pytest.raises(InputError, match=re.escape(message)):
        build_plan(parse_config(cfg, "grid.yaml"))


@pytest.mark.slow
def test_tiny_grid_with_the_realign_regimes_reports_them_with_p_values(tmp_path, tiny_model_dir):
    """Tiny BERT, NLI and retrieval (of the adjusted encoders), es, 2 seeds, local executor: original, adjusted
    and the three realignments; the report puts Adjusted (LoRA) / (sentence) / (frozen) after Adjusted, each
    with p-values vs Original and Adjusted."""
    from test_xsr import write_tatoeba

    nli = write_nli(tmp_path / "xnli")
    results = tmp_path / "results"
    small = {"gpus": 0, "hours": 0.5}
    cfg = {"model_name_or_path": tiny_model_dir, "results_dir": str(results), "languages": ["es"], "seeds": 2,
           "regimes": ["original", "adjusted", *REALIGN],
           "parallel": {"es": write_parallel(tmp_path / "en-es.txt")}, "workdir": str(ROOT),
           "alignment": {"args": {"max_sentences": 32}},
           "adjust": {"args": {"per_device_train_batch_size": 8}, "resources": small,
                      "regime_args": {"adjusted_sentence": {"align_layer": 1}}},
           "common_args": {"use_cpu": True, "report_to": "none", "disable_tqdm": True},
           "tasks": {"nli": {"args": {"train_file": str(nli / "train-en.tsv"),
                                      "test_file_pattern": str(nli / "test-{lang}.tsv"), "num_train_epochs": 1,
                                      "per_device_train_batch_size": 16},
                             "resources": small},
                     "xsr": {"args": {"tatoeba_dir": str(write_tatoeba(tmp_path / "tatoeba", langs=("es",))),
                                      "device": "cpu"}, "resources": small}},
           "env": OFFLINE}
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump(cfg))
    proc = run_grid(str(config))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for seed in (0, 1):
        lora = results / f"adjust_lora/es/seed{seed}"
        assert (lora / "adapter_config.json").exists() and (lora / "merged/config.json").exists()
        trained = json.loads((lora / "train_results.json").read_text())["trainable_parameters"]
        full = json.loads((results / f"adjust/es/seed{seed}/train_results.json").read_text())["trainable_parameters"]
        frozen = json.loads((results / f"adjust_frozen/es/seed{seed}/train_results.json").read_text())
        assert trained < frozen["trainable_parameters"] < full
        for task in ("nli", "xsr"):  # the merged weights, for fine-tuning and for retrieval alike
            run_args = json.loads((results / f"{task}/adjusted_lora/es/seed{seed}/run_args.json").read_text())
            assert run_args["model"]["model_name_or_path"].endswith(f"adjust_lora/es/seed{seed}/merged")

    report = subprocess.run([sys.executable, "-m", "hf_xladjust.report", str(results)], cwd=ROOT,
                            env={**os.environ, **OFFLINE}, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    labels = ["Original", "Adjusted", "Adjusted (LoRA)", "Adjusted (sentence)", "Adjusted (frozen)"]
    tables = json.loads((results / "report" / "report.json").read_text())["tasks"]
    for task in ("nli", "xsr"):
        assert [row[0] for row in tables[task]["rows"]] == labels
    for rows in printed_p_values(report.stdout, tasks=2):
        for label in labels[2:]:
            cells = rows[label]
            assert cells and all(re.fullmatch(r"[0-9.e-]+ / [0-9.e-]+", c) for c in cells), cells
    print(report.stdout)
