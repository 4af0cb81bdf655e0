"""bf16 on the CPU: detection (injected), `--bf16 true` alone in every script, what the Trainer applied, fp32
losses/vectors under autocast, the record in run_args.json and the one-line refusal without CPU support."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import diagonal_pharaoh, fixture_lines
from transformers import AutoModel, AutoTokenizer, HfArgumentParser, TrainingArguments

from hf_xladjust import precision
from hf_xladjust.alignment.pairs import AlignedPair, write_aligned_pairs
from hf_xladjust.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
REFUSAL = ("--bf16: this CPU has no native bf16 (amx_bf16 / avx512_bf16 / bf16 not among its flags) and no GPU "
           "is available; run in fp32 (drop the flag)")


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU-only machine whose CPU has AVX512-BF16 (whatever this one has: autocast runs bf16 anywhere)."""
    monkeypatch.setenv(precision.FLAGS_ENV, "fpu sse avx512f avx512_bf16")
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    monkeypatch.setattr(precision, "accelerator_available", lambda: False)


@pytest.fixture
def no_bf16_cpu(bf16_cpu, monkeypatch):
    monkeypatch.setenv(precision.FLAGS_ENV, "fpu sse avx2 avx512f")


# --- detection ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags, feature", [
    ("fpu avx512f avx512_bf16 amx_tile amx_bf16", "amx_bf16"),  # AMX preferred
    ("fpu avx512f avx512_bf16", "avx512_bf16"),
    ("fp asimd bf16 i8mm", "bf16"),  # Arm (Features line)
    ("fpu avx2 avx512f avx512_vnni", None),
    ("", None),
])
def test_detection_from_injected_flags(monkeypatch, flags, feature):
    assert precision.cpu_bf16_support(flags.split()) == feature
    monkeypatch.setenv(precision.FLAGS_ENV, flags)
    assert precision.cpu_flags() == flags.split()
    assert precision.cpu_bf16_support() == feature


def test_detection_reads_proc_cpuinfo_or_torch(monkeypatch):
    monkeypatch.delenv(precision.FLAGS_ENV, raising=False)
    flags = precision.cpu_flags()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.split(":")[0].strip() in ("flags", "Features")), "")
        assert flags == line.partition(":")[2].split()
    if precision.cpu_bf16_support() == "avx512_bf16" and hasattr(torch.cpu, "_is_avx512_bf16_supported"):
        assert torch.cpu._is_avx512_bf16_supported()  # torch's own check agrees


# --- argument preparation -----------------------------------------------------------------------------

def training_parser():
    return HfArgumentParser((TrainingArguments,))


@pytest.mark.parametrize("given", [["--bf16", "true"], ["--bf16"], ["--bf16=True"], ["--bf16_full_eval", "yes"]])
def test_bf16_alone_adds_use_cpu(bf16_cpu, given):
    args = ["--output_dir", "o", *given]
    prepared = precision.prepare_bf16_arguments(training_parser(), args)
    assert prepared == args + ["--use_cpu", "true"]
    (parsed,) = training_parser().parse_args_into_dataclasses(args=prepared)
    assert parsed.use_cpu and (parsed.bf16 or parsed.bf16_full_eval)


def test_without_bf16_or_with_use_cpu_nothing_changes(bf16_cpu):
    for args in (["--output_dir", "o"], ["--output_dir", "o", "--bf16", "false"],
                 ["--output_dir", "o", "--bf16", "true", "--use_cpu", "true"]):
        assert precision.prepare_bf16_arguments(training_parser(), args) == args


def test_refused_in_one_line_without_cpu_support(no_bf16_cpu, monkeypatch):
    with pytest.raises(InputError) as err:
        precision.prepare_bf16_arguments(training_parser(), ["--output_dir", "o", "--bf16", "true"])
    assert str(err.value) == REFUSAL
    # plain fp32 is untouched on such a CPU, even with the auto setting
    monkeypatch.setenv(precision.PRECISION_ENV, "auto")
    assert precision.prepare_bf16_arguments(training_parser(), ["--output_dir", "o"]) == ["--output_dir", "o"]


def test_auto_setting(bf16_cpu, monkeypatch):
    monkeypatch.setenv(precision.PRECISION_ENV, "auto")
    parser = training_parser()
    assert precision.prepare_bf16_arguments(parser, ["--output_dir", "o"]) == [
        "--output_dir", "o", "--bf16", "true", "--use_cpu", "true"]
    for explicit in (["--bf16", "false"], ["--fp16", "false"]):  # an explicit choice wins
        assert precision.prepare_bf16_arguments(parser, ["--output_dir", "o", *explicit]) == ["--output_dir", "o",
                                                                                                *explicit]
    assert precision.prepare_bf16_arguments(parser, json_args={"output_dir": "o"}) == {
        "output_dir": "o", "bf16": True, "use_cpu": True}
    monkeypatch.setattr(precision, "accelerator_available", lambda: True)  # a GPU: auto leaves it to the user
    assert precision.prepare_bf16_arguments(parser, ["--output_dir", "o"]) == ["--output_dir", "o"]
    monkeypatch.setenv(precision.PRECISION_ENV, "fast")
    with pytest.raises(InputError, match="HF_XLADJUST_PRECISION='fast': expected one of fp32, auto"):
        precision.prepare_bf16_arguments(parser, ["--output_dir", "o"])


@pytest.mark.parametrize("script", ["run_adjust", "run_glue_xl", "run_ner_xl", "run_qa_xl", "run_xsr"])
def test_every_script_parses_bf16_true_alone(bf16_cpu, monkeypatch, script):
    from hf_xladjust.cli import parse_arguments

    module = __import__(script)
    extra = {"run_adjust": ["--train_file", "t.txt"],
             "run_xsr": ["--languages", "es", "--tatoeba_dir", "t"]}.get(script, [])
    monkeypatch.setattr(sys, "argv", [f"{script}.py", "--model_name_or_path", "m", "--output_dir", "o",
                                      "--bf16", "true", *extra])
    parsed = parse_arguments(module.build_parser())
    (args,) = [p for p in parsed if hasattr(p, "bf16")]
    assert args.bf16 is True
    if isinstance(args, TrainingArguments):
        assert args.use_cpu is True and args.device.type == "cpu"
    monkeypatch.setenv(precision.FLAGS_ENV, "")
    with pytest.raises(InputError, match="no native bf16"):
        parse_arguments(module.build_parser())


def test_cpu_bf16_attention_by_length():
    for length, flash in ((17, False), (128, False), (129, True), (384, True)):
        inputs = {"input_ids": torch.zeros(2, length, dtype=torch.long), "labels": torch.zeros(2)}
        with precision.cpu_bf16_attention(inputs):
            assert torch.backends.cuda.flash_sdp_enabled() is flash, length
        assert torch.backends.cuda.flash_sdp_enabled()
    pair_batch = {"src_input_ids": torch.zeros(4, 20), "tgt_input_ids": torch.zeros(4, 140)}
    assert precision.batch_length(pair_batch) == 140


# --- what runs under autocast ---------------------------------------------------------------------------

def joined_corpus(tmp_path, lang="es"):
    path = tmp_path / f"en-{lang}.txt"
    path.write_text("".join(f"{a} ||| {b}\n" for a, b in zip(fixture_lines("en"), fixture_lines(lang))),
                    encoding="utf-8")
    return path


def linear_output_dtypes(model, dtypes):
    """Hooks on every nn.Linear of `model` that record their outputs' dtypes (bf16: the matmul ran under autocast)."""
    return [m.register_forward_hook(lambda mod, inp, out: dtypes.add(out.dtype))
            for m in model.modules() if isinstance(m, torch.nn.Linear)]


def spy_compute_loss(monkeypatch, cls, seen):
    """What the Trainer applied, read in its own compute_loss: its arguments, the accelerator's mixed precision,
    the dtype the model's matmuls ran in during the step, and the loss's dtype."""
    original = cls.compute_loss

    def compute_loss(self, model, inputs, *args, **kwargs):
        dtypes = set()
        handles = linear_output_dtypes(model, dtypes)
        try:
            result = original(self, model, inputs, *args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        if not model.training:  # prediction steps (return_outputs=True) are not the training step
            return result
        loss = result
        seen.append({"bf16": self.args.bf16, "use_cpu": self.args.use_cpu, "device": self.args.device.type,
                     "matmul_dtypes": dtypes, "loss_dtype": loss.dtype,
                     "mixed_precision": self.accelerator.mixed_precision})
        return result
    monkeypatch.setattr(cls, "compute_loss", compute_loss)


def test_run_adjust_bf16_true_alone_trains_under_cpu_autocast(bf16_cpu, tmp_path, tiny_model_dir, monkeypatch,
                                                               caplog):
    import run_adjust
    from hf_xladjust.alignment import loss as loss_module
    from hf_xladjust.trainers.adjust import AdjustTrainer

    seen, f0_dtypes, kernels = [], [], []
    spy_compute_loss(monkeypatch, AdjustTrainer, seen)
    choose = precision.cpu_bf16_attention

    def spy_attention(inputs):
        kernels.append(torch.backends.cuda.flash_sdp_enabled())
        context = choose(inputs)
        return context
    monkeypatch.setattr(precision, "cpu_bf16_attention", spy_attention)
    anchor_vectors = loss_module.AlignmentLoss._anchor_vectors

    def spy_anchor(self, batch, device):  # f0's own hidden states: computed under the step's autocast
        dtypes = set()
        handles = linear_output_dtypes(self.anchor_model, dtypes)
        try:
            vectors = anchor_vectors(self, batch, device)
        finally:
            for h in handles:
                h.remove()
        f0_dtypes.append(dtypes)
        assert vectors.dtype == torch.float32
        return vectors
    monkeypatch.setattr(loss_module.AlignmentLoss, "_anchor_vectors", spy_anchor)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "run_adjust.py", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(joined_corpus(tmp_path)),
        "--aligner", "pharaoh", "--alignment_file", str(diagonal_pharaoh(tmp_path / "al")), "--target_lang", "es",
        "--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4", "--bf16", "true",
        "--report_to", "none", "--disable_tqdm", "true"])
    run_adjust.run_main(run_adjust.main)
    assert len(seen) == 2
    for s in seen:
        assert (s["bf16"], s["use_cpu"], s["device"], s["mixed_precision"]) == (True, True, "cpu", "bf16")
        assert s["matmul_dtypes"] == {torch.bfloat16}  # the model's forward ran under CPU autocast
        assert s["loss_dtype"] == torch.float32
    assert f0_dtypes == [{torch.bfloat16}] * 2  # f0 under the same autocast
    run_args = json.loads((out / "run_args.json").read_text())
    assert run_args["precision"] == {"precision": "bf16", "device": "cpu", "autocast": True,
                                     "cpu_bf16": "avx512_bf16",
                                     "attention": "sdpa math backend for steps of <= 128 tokens, flash above"}
    assert len(kernels) == 2  # the Trainer chose the attention kernel for each training step
    assert torch.backends.cuda.flash_sdp_enabled()  # the kernel choice is per step: nothing left switched off
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("precision: ")]
    assert said and said[0].startswith("precision: bf16 on cpu (autocast; ") and "avx512_bf16" in said[0]
    assert run_args["training"]["bf16"] is True and run_args["training"]["use_cpu"] is True


def test_run_glue_xl_continual_bf16_true_alone(bf16_cpu, tmp_path, tiny_model_dir, monkeypatch):
    from test_xnli import parallel_tsvs

    import run_glue_xl
    from hf_xladjust.trainers.continual import ContinualAlignTrainer

    seen, side_dtypes = [], []
    spy_compute_loss(monkeypatch, ContinualAlignTrainer, seen)
    side_loss = ContinualAlignTrainer._side_loss

    def spy_side(self, model):
        dtypes = set()
        handles = linear_output_dtypes(model, dtypes)
        try:
            out = side_loss(self, model)
        finally:
            for h in handles:
                h.remove()
        side_dtypes.append((out["loss"].dtype, dtypes))
        return out
    monkeypatch.setattr(ContinualAlignTrainer, "_side_loss", spy_side)
    pairs = [AlignedPair(e.split(), s.split(), [(k, k) for k in range(min(len(e.split()), len(s.split())))])
             for e, s in zip(fixture_lines("en"), fixture_lines("es"))]
    write_aligned_pairs(str(tmp_path / "pairs.jsonl"), pairs)
    data = tmp_path / "data"
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "run_glue_xl.py", "--model_name_or_path", str(tiny_model_dir),
        "--train_file", parallel_tsvs(data, ("en",), n=16, prefix="dev").format(lang="en"),
        "--test_file_pattern", parallel_tsvs(data, ("en", "es"), n=6), "--eval_languages", "es", "--do_train",
        "--do_predict", "--per_device_train_batch_size", "8", "--num_train_epochs", "1",
        "--aligned_pairs", str(tmp_path / "pairs.jsonl"), "--align_batch_size", "4", "--output_dir", str(out),
        "--bf16", "true", "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no"])
    run_glue_xl.run_main(run_glue_xl.main)
    assert len(seen) == 2 and all(s["matmul_dtypes"] == {torch.bfloat16} and s["use_cpu"] for s in seen)
    assert all(s["loss_dtype"] == torch.float32 for s in seen)
    # the side batch: its forward in bf16 under the step's autocast, its loss in fp32
    assert side_dtypes == [(torch.float32, {torch.bfloat16})] * 2
    assert json.loads((out / "run_args.json").read_text())["precision"]["precision"] == "bf16"
    results = json.loads((out / "all_results.json").read_text())
    assert 0 <= results["test_es_accuracy"] <= 1


def test_refusal_is_one_line_from_the_script(tmp_path, tiny_model_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", precision.FLAGS_ENV: "fpu avx2",
           "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "run_adjust.py"), "--model_name_or_path", str(tiny_model_dir),
                           "--train_file", str(joined_corpus(tmp_path)), "--output_dir", str(out), "--bf16", "true"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"run_adjust.py: error: {REFUSAL}"]
    assert not out.exists()


# --- evaluators: fp32 vectors and distances under bf16 autocast ---------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModel.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_retrieval_evaluator_amp_bf16(bf16_cpu, tiny):
    from hf_xladjust.evaluation.retrieval import SentenceRetrievalEvaluator

    model, tokenizer = tiny
    src, tgt = fixture_lines("es")[:10], fixture_lines("en")[:10]
    fp32 = SentenceRetrievalEvaluator(src, tgt, tokenizer)
    bf16 = SentenceRetrievalEvaluator(src, tgt, tokenizer, amp="bf16")
    v32, v16 = fp32.embed(model), bf16.embed(model)
    assert v16.dtype == torch.float32 and v16.shape == v32.shape
    assert not torch.equal(v16, v32)  # the forward did run in bf16 ...
    cos = torch.nn.functional.cosine_similarity(v16, v32, dim=-1)
    assert cos.min() > 0.98  # ... close to fp32
    metrics = bf16(model)
    assert 0 < metrics["xsr_mrr"] <= 1


def test_distance_evaluator_amp_bf16_and_refusal(bf16_cpu, tiny, monkeypatch):
    from hf_xladjust.evaluation.distances import WordDistanceEvaluator

    model, tokenizer = tiny
    pairs = [AlignedPair(e.split(), s.split(), [(k, k) for k in range(min(len(e.split()), len(s.split())))])
             for e, s in zip(fixture_lines("en"), fixture_lines("es"))]
    m32 = WordDistanceEvaluator(pairs, tokenizer)(model)
    evaluator = WordDistanceEvaluator(pairs, tokenizer, amp="bf16")
    vectors, _ = evaluator.word_vectors(model)
    assert all(v.dtype == torch.float32 for v in vectors.values())
    m16 = evaluator(model)
    assert m16["related_mean"] != m32["related_mean"]
    assert m16["related_mean"] == pytest.approx(m32["related_mean"], rel=0.02)
    assert m16["unrelated_mean"] == pytest.approx(m32["unrelated_mean"], rel=0.02)
    monkeypatch.setenv(precision.FLAGS_ENV, "avx2")
    with pytest.raises(InputError, match=r"^amp bf16: this CPU has no native bf16"):
        evaluator(model)
    with pytest.raises(ValueError, match="amp must be"):
        WordDistanceEvaluator(pairs, tokenizer, amp="int8")


def test_transform_statistics_stay_fp64_under_autocast(tiny):
    from hf_xladjust.alignment.pairs import AlignedPairCollator, AlignedPairDataset
    from hf_xladjust.evaluation.transforms import fit_statistics

    model, tokenizer = tiny
    pairs = [AlignedPair(e.split(), s.split(), [(k, k) for k in range(min(len(e.split()), len(s.split())))])
             for e, s in zip(fixture_lines("en"), fixture_lines("es"))]
    dataset = AlignedPairDataset(pairs, tokenizer)
    collator = AlignedPairCollator(tokenizer.pad_token_id)
    plain = fit_statistics(model, dataset, collator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fit_statistics(model, dataset, collator)
    assert mixed.cross.dtype == torch.float64 and mixed.n == plain.n
    # bf16 forward, fp32/fp64 sums: the moments agree to bf16's precision, not bit for bit
    assert torch.allclose(mixed.moments("x")[0], plain.moments("x")[0], atol=0.05)


def continual_pairs(tmp_path):
    pairs = [AlignedPair(e.split(), s.split(), [(k, k) for k in range(min(len(e.split()), len(s.split())))])
             for e, s in zip(fixture_lines("en"), fixture_lines("es"))]
    write_aligned_pairs(str(tmp_path / "pairs.jsonl"), pairs)
    return tmp_path / "pairs.jsonl"


def test_run_ner_xl_continual_bf16_true_alone(bf16_cpu, tmp_path, tiny_model_dir, monkeypatch):
    from test_ner import NER, check_outputs, train_file_of

    import run_ner_xl
    from hf_xladjust.trainers.continual import ContinualAlignTrainer

    seen = []
    spy_compute_loss(monkeypatch, ContinualAlignTrainer, seen)
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", [
        "run_ner_xl.py", "--model_name_or_path", str(tiny_model_dir), "--train_file", str(train_file_of(tmp_path, 16)),
        "--validation_file_pattern", str(NER / "dev-{lang}.tsv"), "--eval_languages", "es", "--do_train", "--do_eval",
        "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--aligned_pairs",
        str(continual_pairs(tmp_path)), "--align_batch_size", "4", "--output_dir", str(out), "--bf16", "true",
        "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no"])
    run_ner_xl.run_main(run_ner_xl.main)
    assert len(seen) == 2 and all(s["matmul_dtypes"] == {torch.bfloat16} and s["use_cpu"] for s in seen)
    assert all(s["loss_dtype"] == torch.float32 for s in seen)
    check_outputs(out, "eval", ["en", "es"])
    assert json.loads((out / "run_args.json").read_text())["precision"]["precision"] == "bf16"


def test_run_qa_xl_continual_bf16_true_alone(bf16_cpu, tmp_path, tiny_model_dir, monkeypatch):
    from test_qa import QA, WINDOW, check_outputs, run_script

    from hf_xladjust.trainers.qa import QuestionAnsweringTrainer

    seen = []
    spy_compute_loss(monkeypatch, QuestionAnsweringTrainer, seen)
    out = tmp_path / "out"
    run_script(monkeypatch, "--model_name_or_path", tiny_model_dir, "--train_file", QA / "train.json",
               "--xquad_dir", QA, "--eval_languages", "es", "--do_train", "--do_predict",
               "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--aligned_pairs",
               continual_pairs(tmp_path), "--align_batch_size", "4", "--output_dir", out, *WINDOW, "--bf16", "true",
               common=("--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no"))
    assert seen and all(s["matmul_dtypes"] == {torch.bfloat16} and s["use_cpu"] for s in seen)
    assert all(s["loss_dtype"] == torch.float32 for s in seen)
    check_outputs(out, {"test": ["xquad_es", "xquad_es-q_en-c", "xquad_en-q_es-c"]})
    assert json.loads((out / "run_args.json").read_text())["precision"]["precision"] == "bf16"


def test_run_xsr_bf16_on_the_cpu_and_its_refusal(bf16_cpu, tmp_path, tiny_model_dir, monkeypatch):
    from test_xsr import read_outputs, run_xsr, write_tatoeba

    folder = write_tatoeba(tmp_path / "tatoeba", ("es",))
    runs = {}
    for amp in ("fp32", "bf16"):
        out = tmp_path / amp
        run_xsr(monkeypatch, "--model_name_or_path", tiny_model_dir, "--tatoeba_dir", folder, "--languages", "es",
                "--output_dir", out, *(["--bf16", "true"] if amp == "bf16" else []))
        runs[amp] = read_outputs(out)[0]
        record = json.loads((out / "run_args.json").read_text())["precision"]
        assert (record["precision"], record["autocast"], record["cpu_bf16"]) == (amp, amp == "bf16", "avx512_bf16")
    assert runs["bf16"]["xsr_es_mrr"] == pytest.approx(runs["fp32"]["xsr_es_mrr"], abs=0.1)
    monkeypatch.setenv(precision.FLAGS_ENV, "avx2")
    with pytest.raises(InputError, match="no native bf16"):
        run_xsr(monkeypatch, "--model_name_or_path", tiny_model_dir, "--tatoeba_dir", folder, "--languages", "es",
                "--output_dir", tmp_path / "refused", "--bf16", "true")
    assert not (tmp_path / "refused").exists()
