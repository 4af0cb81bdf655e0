"""Issue 19.1 in continual alignment: --lora_r puts LoRA adapters on the task model's encoder with its head fully
trainable; f0 is the same model with its adapters off (exactly the base model's outputs, during training); at the
end the adapter is merged into a plain checkpoint (W + (α/r)·B·A, computed here by hand from the saved adapter),
which the same run evaluates and AutoModelForSequenceClassification loads without PEFT."""
import json
import sys

import pytest
import torch
from ddp_continual_script import side_pairs, task_dataset
from safetensors.torch import load_file
from test_xnli import check_outputs, parallel_tsvs
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    TrainerCallback,
    TrainingArguments,
)

from hf_xladjust.alignment.loss import AlignmentLossArguments
from hf_xladjust.alignment.pairs import AlignmentDataArguments, write_aligned_pairs
from hf_xladjust.alignment.realign import RealignmentArguments
from hf_xladjust.errors import InputError
from hf_xladjust.trainers.continual import ContinualAlignArguments, ContinualAlignTrainer, check_realign_options
from hf_xladjust.trainers.continual import continual_kwargs as make_continual_kwargs

pytest.importorskip("peft")
NO_DROPOUT = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
R, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def setup(tiny_model_dir, tok, tmp_path, schedule="sum", **realign):
    write_aligned_pairs(str(tmp_path / "aligned_pairs.jsonl"), side_pairs())
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3, **NO_DROPOUT)
    start = {n: p.detach().clone() for n, p in model.state_dict().items()}
    cont = ContinualAlignArguments(aligned_pairs=str(tmp_path / "aligned_pairs.jsonl"), align_batch_size=4,
                                   align_schedule=schedule)
    kw = make_continual_kwargs(cont, AlignmentDataArguments(), AlignmentLossArguments(), tok, tiny_model_dir, seed=0,
                               realign_args=RealignmentArguments(lora_r=R, lora_alpha=ALPHA, **realign), model=model)
    return model, start, kw


def targs(out, **kw):
    base = dict(output_dir=str(out), per_device_train_batch_size=8, max_steps=3, learning_rate=5e-2,
                lr_scheduler_type="constant", logging_steps=1, save_strategy="no", report_to=[], seed=11,
                use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    return TrainingArguments(**{**base, **kw})


class F0Probe(TrainerCallback):
    """At every step end: f0 (the trainer's anchor, adapters off) against the untouched base encoder, and the
    adapted encoder against it (it must differ once B has moved)."""

    def __init__(self, anchor, encoder, base, batch):
        self.anchor, self.encoder, self.base, self.batch = anchor, encoder, base, batch
        self.equal, self.adapted_differs, self.training_kept = [], [], []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            ref = self.base(**self.batch).last_hidden_state
            was = model.training
            f0 = self.anchor(**self.batch).last_hidden_state
            self.training_kept.append(model.training == was)
            model.eval()
            adapted = self.encoder(**self.batch).last_hidden_state
            model.train(was)
        self.equal.append(torch.equal(f0, ref))
        self.adapted_differs.append(not torch.allclose(adapted, ref))


@pytest.mark.parametrize("schedule", ["sum", "alternate"])
def test_lora_trains_adapters_and_head_f0_is_the_base_model(tiny_model_dir, tok, tmp_path, schedule):
    model, start, kw = setup(tiny_model_dir, tok, tmp_path, schedule)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    lora = [f"bert.encoder.layer.{i}.attention.self.{m}.lora_{ab}.default.weight"
            for i in range(2) for m in ("query", "value") for ab in "AB"]
    head = ["classifier.modules_to_save.default.bias", "classifier.modules_to_save.default.weight"]
    assert trainable == sorted(lora + head)  # query,value: run_adjust.py's default for BERT (PEFT's list)
    base = AutoModel.from_pretrained(tiny_model_dir, **NO_DROPOUT).eval()  # an independent copy of W
    batch = tok(["the cat sat on the mat", "a dog"], padding=True, return_tensors="pt")
    batch = {k: batch[k] for k in ("input_ids", "attention_mask")}
    anchor = kw["alignment_loss"].anchor_model
    probe = F0Probe(anchor, model.bert, base, batch)
    trainer = ContinualAlignTrainer(model=model, args=targs(tmp_path / "out", gradient_accumulation_steps=2),
                                    train_dataset=task_dataset(tok, n=48), data_collator=DataCollatorWithPadding(tok),
                                    processing_class=tok, callbacks=[probe], **kw)
    adapter_state = {}
    finish = trainer._finish_lora

    def keep_adapter_then_merge():  # the adapter as trained, before the merge folds it in
        adapter_state.update({n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n})
        finish()

    trainer._finish_lora = keep_adapter_then_merge
    trainer.train()
    assert probe.equal == [True] * 3 and probe.adapted_differs == [True] * 3 and all(probe.training_kept)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 3 and all(h["align_loss"] > 0 and "anchor_loss" in h for h in logged)
    assert any(h["anchor_loss"] > 0 for h in logged)  # the adapted encoder moved away from f0
    # after train(): a plain BertForSequenceClassification with W + (α/r)·B·A in query/value
    assert not any("lora" in n or "modules_to_save" in n for n in model.state_dict())
    assert all(p.requires_grad is False or n.startswith("classifier.") for n, p in model.named_parameters())
    saved = load_file(str(tmp_path / "out" / "adapter" / "adapter_model.safetensors"))
    for i in range(2):
        for m in ("query", "value"):
            key = f"bert.encoder.layer.{i}.attention.self.{m}"
            a, b = adapter_state[f"{key}.lora_A.default.weight"], adapter_state[f"{key}.lora_B.default.weight"]
            assert torch.equal(saved[f"base_model.model.{key}.lora_A.weight"], a)
            assert b.abs().max() > 0
            expected = start[f"{key}.weight"].double() + (ALPHA / R) * (b.double() @ a.double())
            torch.testing.assert_close(model.state_dict()[f"{key}.weight"].double(), expected, rtol=0, atol=1e-6)


def test_merged_output_loads_without_peft_and_predicts_as_trained(tiny_model_dir, tok, tmp_path):
    model, start, kw = setup(tiny_model_dir, tok, tmp_path)
    out = tmp_path / "out"
    trainer = ContinualAlignTrainer(model=model, args=targs(out), train_dataset=task_dataset(tok, n=24),
                                    data_collator=DataCollatorWithPadding(tok), processing_class=tok, **kw)
    trainer.train()
    trainer.save_model()
    assert not (out / "adapter_config.json").exists() and (out / "adapter" / "adapter_config.json").exists()
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    loaded = AutoModelForSequenceClassification.from_pretrained(out)
    assert type(loaded) is BertForSequenceClassification
    weights = loaded.state_dict()
    assert set(weights) == set(start)
    adapted = set()
    for key in start:
        if key.endswith((".query.weight", ".value.weight")):
            stem = key[:-len(".weight")]
            a = adapter[f"base_model.model.{stem}.lora_A.weight"].double()
            b = adapter[f"base_model.model.{stem}.lora_B.weight"].double()
            expected = start[key].double() + (ALPHA / R) * (b @ a)
            torch.testing.assert_close(weights[key].double(), expected, rtol=0, atol=1e-6)
            assert not torch.equal(weights[key], start[key])
            adapted.add(key)
        elif key.startswith("classifier."):  # the trained head, as the adapter saved it
            saved = adapter[f"base_model.model.{key}"]
            assert torch.equal(weights[key], saved) and not torch.equal(weights[key], start[key])
        else:  # every other weight is the start model's, byte for byte
            assert torch.equal(weights[key], start[key]), key
    assert len(adapted) == 4
    # prediction in the same run uses the merged, trained weights
    data = task_dataset(tok, n=8)
    logits = trainer.predict(data).predictions
    loaded.eval()
    with torch.no_grad():
        enc = DataCollatorWithPadding(tok)([{k: data[i][k] for k in ("input_ids", "token_type_ids",
                                                                       "attention_mask")} for i in range(8)])
        expected = loaded(**enc).logits.numpy()
    assert logits == pytest.approx(expected, abs=1e-5)


def test_lora_refusals_in_fine_tuning():
    loss_args = AlignmentLossArguments()
    with pytest.raises(InputError, match=r"^--lora_r in fine-tuning works with continual alignment only"):
        check_realign_options(ContinualAlignArguments(), loss_args, RealignmentArguments(lora_r=8))
    with pytest.raises(InputError, match=r"^--lora_r in fine-tuning works with continual alignment only"):
        check_realign_options(ContinualAlignArguments(aligned_pairs="p.jsonl"), loss_args,
                              RealignmentArguments(lora_r=8), do_train=False)
    with pytest.raises(InputError, match=r"^--anchor_model_name_or_path does not go with --lora_r"):
        check_realign_options(ContinualAlignArguments(aligned_pairs="p.jsonl", anchor_model_name_or_path="f0"),
                              loss_args, RealignmentArguments(lora_r=8))
    check_realign_options(ContinualAlignArguments(aligned_pairs="p.jsonl"), loss_args, RealignmentArguments(lora_r=8))


def test_run_glue_xl_continual_lora_end_to_end(tiny_model_dir, tmp_path, monkeypatch):
    import run_glue_xl

    write_aligned_pairs(str(tmp_path / "pairs.jsonl"), side_pairs(("es",)))
    data = tmp_path / "data"
    train = parallel_tsvs(data, ("en",), n=16, prefix="dev").format(lang="en")
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "run_glue_xl.py", "--model_name_or_path", tiny_model_dir, "--train_file", train,
        "--test_file_pattern", parallel_tsvs(data, ("en", "es"), n=6), "--eval_languages", "es",
        "--do_train", "--do_predict", "--per_device_train_batch_size", "8", "--num_train_epochs", "1",
        "--learning_rate", "1e-2", "--aligned_pairs", str(tmp_path / "pairs.jsonl"), "--align_batch_size", "4",
        "--lora_r", "2", "--output_dir", str(out), "--report_to", "none", "--use_cpu", "--disable_tqdm", "true",
        "--save_strategy", "no", "--logging_steps", "1"])
    run_glue_xl.run_main(run_glue_xl.main)
    check_outputs(out, {"test": ["en", "es"]})
    logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(logged) == 2 and all("align_loss" in h and "anchor_loss" in h for h in logged)
    assert json.loads((out / "run_args.json").read_text())["realign"]["lora_r"] == 2
    assert (out / "adapter" / "adapter_config.json").exists() and not (out / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out)  # plain checkpoint: no PEFT keys
    base = AutoModel.from_pretrained(tiny_model_dir)
    merged, start = model.bert.state_dict(), base.state_dict()
    changed = sorted(k for k in start if not torch.equal(merged[k], start[k]))
    assert changed == [f"encoder.layer.{i}.attention.self.{m}.weight" for i in range(2) for m in ("query", "value")]
    # the same run's predictions are the merged model's: predict again from the output, without training
    again = tmp_path / "again"
    monkeypatch.setattr(sys, "argv", [
        "run_glue_xl.py", "--model_name_or_path", str(out), "--test_file_pattern", str(data / "test-{lang}.tsv"),
        "--eval_languages", "es", "--do_predict", "--output_dir", str(again), "--report_to", "none", "--use_cpu",
        "--disable_tqdm", "true"])
    run_glue_xl.run_main(run_glue_xl.main)
    for lang in ("en", "es"):
        first = [json.loads(ln) for ln in (out / f"predictions_test_{lang}.jsonl").read_text().splitlines()]
        second = [json.loads(ln) for ln in (again / f"predictions_test_{lang}.jsonl").read_text().splitlines()]
        assert [r["pred"] for r in first] == [r["pred"] for r in second]
        assert [r["score"] for r in first] == pytest.approx([r["score"] for r in second], abs=1e-5)


def test_lora_resumes_from_a_checkpoint_as_an_uninterrupted_run(tiny_model_dir, tok, tmp_path):
    """Checkpoints hold the adapted task model (LoRA matrices, head, optimizer state); a run resumed from step 2
    ends with the same merged weights as the run that went through, with gradient accumulation."""
    def run(out, resume=None):
        model, _, kw = setup(tiny_model_dir, tok, tmp_path)
        trainer = ContinualAlignTrainer(
            model=model, args=targs(out, max_steps=4, save_strategy="steps", save_steps=2,
                                    gradient_accumulation_steps=2),
            train_dataset=task_dataset(tok, n=64), data_collator=DataCollatorWithPadding(tok),
            processing_class=tok, **kw)
        trainer.train(resume_from_checkpoint=resume)
        return model.state_dict()

    full = run(tmp_path / "full")
    resumed = run(tmp_path / "resumed", resume=str(tmp_path / "full" / "checkpoint-2"))
    assert set(full) == set(resumed) and not any("lora" in k for k in full)
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=0, atol=1e-6)


def test_lora_with_frozen_lower_layers(tiny_model_dir, tok, tmp_path):
    """--freeze_layers lower with --lora_r: block 0's adapters stay off the optimizer, so its merged weights are
    the start model's byte for byte, while block 1's query/value and the head move."""
    model, start, kw = setup(tiny_model_dir, tok, tmp_path, freeze_layers="lower")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("bert.encoder.layer.0.") for n in trainable)
    trainer = ContinualAlignTrainer(model=model, args=targs(tmp_path / "out"), train_dataset=task_dataset(tok, n=24),
                                    data_collator=DataCollatorWithPadding(tok), processing_class=tok, **kw)
    trainer.train()
    weights = model.state_dict()
    moved = sorted(k for k in start if not torch.equal(weights[k], start[k]))
    block1 = "bert.encoder.layer.1.attention.self"
    assert moved == [f"{block1}.query.weight", f"{block1}.value.weight", "classifier.bias", "classifier.weight"]


def only_adapted_weights_moved(out, auto_class, tiny_model_dir, head):
    """The output folder is a plain checkpoint of `auto_class`; in its encoder only query/value moved."""
    model = auto_class.from_pretrained(out)
    merged, start = model.bert.state_dict(), AutoModel.from_pretrained(tiny_model_dir).state_dict()
    changed = sorted(k for k in merged if k in start and not torch.equal(merged[k], start[k]))
    assert changed == [f"encoder.layer.{i}.attention.self.{m}.weight" for i in range(2) for m in ("query", "value")]
    assert hasattr(model, head) and (out / "adapter" / "adapter_config.json").exists()


def test_run_ner_xl_continual_lora(tmp_path, tiny_model_dir, monkeypatch):
    from test_ner import NER, run_script, train_file_of
    from test_ner import check_outputs as check_ner
    from transformers import AutoModelForTokenClassification

    write_aligned_pairs(str(tmp_path / "pairs.jsonl"), side_pairs(("es",)))
    out = tmp_path / "out"
    run_script(monkeypatch, "--model_name_or_path", tiny_model_dir, "--train_file", train_file_of(tmp_path, 16),
               "--validation_file_pattern", NER / "dev-{lang}.tsv", "--eval_languages", "es", "--do_train",
               "--do_eval", "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--learning_rate", "1e-2",
               "--aligned_pairs", tmp_path / "pairs.jsonl", "--align_batch_size", "4", "--lora_r", "2",
               "--output_dir", out)
    check_ner(out, "eval", ["en", "es"])
    only_adapted_weights_moved(out, AutoModelForTokenClassification, tiny_model_dir, "classifier")


def test_run_qa_xl_continual_lora(tmp_path, tiny_model_dir, monkeypatch):
    from test_qa import QA, WINDOW, run_script
    from test_qa import check_outputs as check_qa
    from transformers import AutoModelForQuestionAnswering

    write_aligned_pairs(str(tmp_path / "pairs.jsonl"), side_pairs(("es",)))
    out = tmp_path / "out"
    run_script(monkeypatch, "--model_name_or_path", tiny_model_dir, "--train_file", QA / "train.json",
               "--xquad_dir", QA, "--eval_languages", "es", "--do_train", "--do_predict",
               "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--learning_rate", "1e-2",
               "--aligned_pairs", tmp_path / "pairs.jsonl", "--align_batch_size", "4", "--lora_r", "2",
               "--output_dir", out, *WINDOW)
    check_qa(out, {"test": ["xquad_es", "xquad_es-q_en-c", "xquad_en-q_es-c"]})
    only_adapted_weights_moved(out, AutoModelForQuestionAnswering, tiny_model_dir, "qa_outputs")
