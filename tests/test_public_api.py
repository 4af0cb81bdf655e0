"""The public API: `from hf_xladjust import ...` for every public class, a light `import hf_xladjust`, and
library defaults equal to the scripts' (each script's parser, given only its required arguments)."""
import dataclasses
import importlib
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ddp_continual_script import side_pairs

ROOT = Path(__file__).resolve().parents[1]
# The required arguments of each script (everything else is left at its default).
REQUIRED = {"run_adjust": {"train_file": "c.txt"}, "run_glue_xl": {}, "run_ner_xl": {}, "run_qa_xl": {},
            "run_xsr": {"source_file": "a.txt", "target_file": "b.txt", "source_lang": "es"}}
CONTINUAL_SCRIPTS = ("run_glue_xl", "run_ner_xl", "run_qa_xl")


def parse(script, **extra):
    given = {"model_name_or_path": "m", "output_dir": "o", **REQUIRED[script], **extra}
    argv = [x for k, v in given.items() for x in (f"--{k}", str(v))]
    parsed = importlib.import_module(script).build_parser().parse_args_into_dataclasses(argv, look_for_args_file=False)
    return given, {type(obj).__name__: obj for obj in parsed}


def test_import_is_light_and_exports_the_public_api():
    code = ("import sys, hf_xladjust; heavy = [m for m in ('torch', 'transformers') if m in sys.modules]; "
            "print(heavy, len(hf_xladjust.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "[]"  # nothing heavy until a name is used
    import hf_xladjust
    from hf_xladjust.trainers import AdjustTrainer, ContinualAlignTrainer  # the README's module

    for name in ("AdjustTrainer", "AdjustTrainingArguments", "ContinualAlignTrainer", "ContinualAlignArguments",
                 "FineTuningArguments", "QuestionAnsweringTrainer", "AlignmentLoss", "AlignmentLossArguments",
                 "build_aligned_pairs", "AlignedPairDataset", "AlignedPairCollator", "AlignmentDataArguments",
                 "SentenceRetrievalEvaluator", "WordDistanceEvaluator", "paired_ttest", "permutation_test_f1",
                 "resolve_anchor_path"):
        assert name in hf_xladjust.__all__ and getattr(hf_xladjust, name) is not None, name
    assert int(out[1]) == len(hf_xladjust.__all__)
    assert hf_xladjust.ContinualAlignTrainer is ContinualAlignTrainer and hf_xladjust.AdjustTrainer is AdjustTrainer
    with pytest.raises(AttributeError):
        hf_xladjust.NoSuchThing  # noqa: B018
    namespace = {}
    exec("from hf_xladjust import *", namespace)
    assert set(hf_xladjust.__all__) <= set(namespace)


@pytest.mark.parametrize("script", list(REQUIRED))
def test_argument_dataclasses_built_empty_equal_the_scripts_parsed(script):
    """Each argument class built with only the required fields has the parser's defaults, field by field."""
    given, parsed = parse(script)
    for obj in parsed.values():
        names = [f.name for f in dataclasses.fields(obj) if f.init]
        built = type(obj)(**{k: v for k, v in given.items() if k in names})
        assert {n: getattr(built, n) for n in names} == {n: getattr(obj, n) for n in names}, type(obj).__name__


def loss_settings(loss):
    from hf_xladjust import AlignmentLossArguments

    return {f.name: getattr(loss, f.name) for f in dataclasses.fields(AlignmentLossArguments)} | {
        "align_weight": loss.align_weight}


def same_features(a, b):
    assert len(a) == len(b)
    for fa, fb in zip(a.features, b.features):
        assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


@pytest.fixture()
def adjusted(tiny_model_dir, tmp_path):
    """A run_adjust.py output (a model folder plus run_args.json): f0 must resolve to where it started."""
    folder = tmp_path / "adjusted"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "run_args.json").write_text(json.dumps({"model": {"model_name_or_path": tiny_model_dir}}))
    return str(folder)


@pytest.mark.parametrize("script", CONTINUAL_SCRIPTS)
def test_continual_trainer_defaults_are_the_scripts(script, adjusted, tiny_model_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

    from hf_xladjust import ContinualAlignTrainer, continual_kwargs, read_aligned_pairs, write_aligned_pairs

    pairs_file = tmp_path / "aligned_pairs.jsonl"
    write_aligned_pairs(str(pairs_file), side_pairs())
    _, parsed = parse(script, model_name_or_path=adjusted, aligned_pairs=pairs_file)
    training = next(a for a in parsed.values() if hasattr(a, "seed"))
    tok = AutoTokenizer.from_pretrained(adjusted)
    ours = continual_kwargs(parsed["ContinualAlignArguments"], parsed["AlignmentDataArguments"],
                            parsed["AlignmentLossArguments"], tok, adjusted, seed=training.seed)

    model = AutoModelForSequenceClassification.from_pretrained(adjusted, num_labels=3)
    trainer = ContinualAlignTrainer(model=model, args=TrainingArguments(str(tmp_path / "o"), report_to=[]),
                                    processing_class=tok, align_dataset=read_aligned_pairs(str(pairs_file)))
    assert loss_settings(trainer.alignment_loss) == loss_settings(ours["alignment_loss"])
    assert trainer.alignment_loss.align_weight == 0.01 and trainer.alignment_loss.anchor_weight == 1.0
    assert trainer.align_batch_size == ours["align_batch_size"] == 16
    f0, script_f0 = trainer.alignment_loss.anchor_model, ours["alignment_loss"].anchor_model
    assert f0.name_or_path == script_f0.name_or_path == tiny_model_dir  # the original, not the adjusted folder
    same_features(trainer.align_dataset, ours["align_dataset"])
    assert trainer.align_dataset.special_links == 2 * len(side_pairs())  # CLS<->CLS and SEP<->SEP


def test_adjust_defaults_are_run_adjusts(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    from hf_xladjust import AdjustTrainer, AlignedPairCollator, AlignedPairDataset, AlignmentLoss

    _, parsed = parse("run_adjust", output_dir=tmp_path / "o")
    data_args, loss_args, training = (parsed["AdjustDataArguments"], parsed["AlignmentLossArguments"],
                                      parsed["AdjustTrainingArguments"])
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModel.from_pretrained(tiny_model_dir)
    script_loss = AlignmentLoss.from_args(loss_args, anchor_model=AutoModel.from_pretrained(tiny_model_dir))
    max_length = min(tok.model_max_length, model.config.max_position_embeddings)  # as run_adjust.py
    script_data = AlignedPairDataset(side_pairs(), tok, max_length, data_args.link_special_tokens)
    data = AlignedPairDataset(side_pairs(), tok)
    same_features(data, script_data)
    trainer = AdjustTrainer(model=model, args=training, train_dataset=data, processing_class=tok)
    assert loss_settings(trainer.alignment_loss) == loss_settings(script_loss) == loss_settings(AlignmentLoss(model))
    assert trainer.alignment_loss.align_weight == 1.0  # stage 1: Eq. 1 has no weight on the pull term
    f0 = trainer.alignment_loss.anchor_model
    assert f0 is not model and not f0.training
    assert all(torch.equal(a, b) for a, b in zip(f0.parameters(), model.parameters()))
    assert isinstance(trainer.data_collator, AlignedPairCollator) and trainer.data_collator.pad_token_id == 0


def test_evaluator_defaults_are_the_clis():
    from hf_xladjust import SentenceRetrievalEvaluator, WordDistanceEvaluator
    from hf_xladjust.evaluation.distances import build_parser as distances_parser

    _, parsed = parse("run_xsr")
    retrieval = inspect.signature(SentenceRetrievalEvaluator).parameters
    for name in ("pooling", "batch_size", "max_length"):
        assert retrieval[name].default == getattr(parsed["RetrievalArguments"], name), name
    args, data_args, _ = distances_parser().parse_args_into_dataclasses(["--output_dir", "o", "--pairs", "p.jsonl"])
    distance = inspect.signature(WordDistanceEvaluator).parameters
    for name in ("seed", "layer", "pooling", "batch_size"):
        assert distance[name].default == getattr(args, name), name
    assert distance["max_length"].default == data_args.align_max_length


def test_own_trainer_example_aligns(tiny_model_dir, tmp_path):
    """examples/own_trainer.py: a user's Trainer subclass (compute_loss without super) gains continual
    alignment in a few marked lines, on a tiny model and the fixtures' en ||| es lines."""
    from conftest import fixture_lines

    example = ROOT / "examples" / "own_trainer.py"
    added = [line for line in example.read_text().splitlines() if "# +" in line and "`# +`" not in line]
    assert 0 < len(added) <= 6  # the lines a user adds or changes
    parallel = tmp_path / "en-es.txt"
    parallel.write_text("".join(f"{en} ||| {es}\n" for en, es in zip(fixture_lines("en"), fixture_lines("es"))))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(example), tiny_model_dir, str(parallel), "--output_dir", str(out),
                           "--max_steps", "3"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3]
    assert all(h["align_loss"] > 0 and h["anchor_loss"] >= 0 and h["batches_without_links"] == 0 for h in logged)
    assert (out / "model.safetensors").is_file()
