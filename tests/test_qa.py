"""QA data (SQuAD-format reading, cross-lingual sets), windows, post-processing, the QA trainer and
run_qa_xl.py end to end."""
import json
import runpy
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import build_tiny_model, fixture_lines
from hub_repos import qa_split, write_repo
from transformers import (
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    Trainer,
    TrainingArguments,
)

from hf_xladjust.errors import InputError
from hf_xladjust.tasks.qa import (
    QAExample,
    QASet,
    best_spans,
    build_cross_lingual,
    examples_from_hub,
    examples_to_columns,
    load_qa_set,
    mlqa_sets,
    named_sets,
    postprocess_qa_predictions,
    prepare_train_features,
    read_squad_json,
    score_set,
    train_features,
    tydiqa_sets,
    validation_features,
    xquad_sets,
)

ROOT = Path(__file__).resolve().parents[1]
QA = Path(__file__).parent / "fixtures" / "qa"
COMMON_FLAGS = ("--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--save_strategy", "no",
                "--logging_steps", "1")
WINDOW = ("--max_seq_length", "64", "--doc_stride", "16")  # the tiny model has 64 positions


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def squad_file(path, paragraphs, version="1.1"):
    """A SQuAD-format file from [(context, [(id, question, [(text, answer_start)])])]."""
    data = [{"title": "t", "paragraphs": [
        {"context": c, "qas": [{"id": i, "question": q, "answers": [{"text": t, "answer_start": s} for t, s in a]}
                               for i, q, a in qas]} for c, qas in paragraphs]}]
    path.write_text(json.dumps({"version": version, "data": data}, ensure_ascii=False), encoding="utf-8")
    return str(path)


# --- reading --------------------------------------------------------------------------------------

def test_read_squad_json_fixtures():
    examples, labelled = read_squad_json(str(QA / "train.json"))
    assert labelled and len(examples) == 12 and [e.id for e in examples[:3]] == ["t1", "t2", "t3"]
    t8 = examples[7]
    assert t8.answers == ["at seven o'clock", "seven o'clock"] and t8.title == "Town"
    assert all(e.context[s:s + len(t)] == t for e in examples for t, s in zip(e.answers, e.answer_starts))
    examples, labelled = read_squad_json(str(QA / "tydiqa.goldp.ru.dev.json"))  # no title, empty answers
    assert not labelled and len(examples) == 2
    with pytest.raises(InputError, match="no gold answers in the whole set"):
        read_squad_json(str(QA / "tydiqa.goldp.ru.dev.json"), require_answers=True)


@pytest.mark.parametrize("content, reason", [
    ({"version": "1.1"}, "no 'data' list at the top level"),
    ([{"context": "x"}], "no 'data' list at the top level"),
    ({"data": [{"title": "t"}]}, "data[0]: missing 'paragraphs'"),
    ({"data": [{"paragraphs": [{"context": "abc", "qas": {}}]}]}, "data[0].paragraphs[0]: 'qas' should be a list"),
    ({"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "q7", "answers": []}]}]}]},
     "question 'q7' (data[0].paragraphs[0].qas[0]): missing 'question'"),
    ({"data": [{"paragraphs": [{"context": "abc", "qas": [
        {"id": "q7", "question": "?", "answers": [{"text": "b", "answer_start": "1"}]}]}]}]},
     "question 'q7' (data[0].paragraphs[0].qas[0]): answer 0: 'answer_start' should be a int, got str"),
    ({"data": [{"paragraphs": [{"context": "abc", "qas": [
        {"id": "q1", "question": "?", "answers": [{"text": "b", "answer_start": 1}]},
        {"id": "q2", "question": "?", "answers": [{"text": "c", "answer_start": 1}]}]}]}]},
     "question 'q2' (data[0].paragraphs[0].qas[1]): answer 0 'c' does not match the context at answer_start 1 ('b')"),
    ({"data": [{"paragraphs": [{"context": "abc", "qas": [
        {"id": "q1", "question": "?", "answers": [{"text": "b", "answer_start": 1}]},
        {"id": "q1", "question": "?", "answers": [{"text": "c", "answer_start": 2}]}]}]}]},
     "question 'q1' (data[0].paragraphs[0].qas[1]): duplicate id"),
    ({"data": [{"paragraphs": [{"context": "abc", "qas": [
        {"id": "q1", "question": "?", "answers": [{"text": "b", "answer_start": 1}]},
        {"id": "q2", "question": "?", "answers": []}]}]}]}, "question 'q2' (data[0].paragraphs[0].qas[1]): no answer"),
    ({"data": [{"paragraphs": [{"context": "abc", "qas": [
        {"id": "q1", "question": "?", "answers": [{"text": "b", "answer_start": 1}, {"text": "", "answer_start": 0}]}
    ]}]}]}, "answer 1 has an empty text"),
    ({"data": [{"paragraphs": [{"context": "abc", "qas": [
        {"id": "q1", "question": " ", "answers": [{"text": "b", "answer_start": 1}]}]}]}]}, "empty question"),
    ({"data": []}, "no questions"),
])
def test_malformed_squad_json_names_file_and_record(tmp_path, content, reason):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_squad_json(str(path))
    assert err.value.path == str(path) and str(err.value).startswith(f"{path}: ")
    assert reason in str(err.value)


@pytest.mark.parametrize("start, reason", [
    (1666, "answer 0 'b' lies beyond the context: answer_start 1666, the context has 3 characters"),
    (3, "answer 0 'b' lies beyond the context: answer_start 3, the context has 3 characters"),
    (-1, "answer 0 'b' has a negative answer_start -1"),
])
def test_answer_start_outside_the_context_says_so(tmp_path, start, reason):
    path = squad_file(tmp_path / "bad.json", [("abc", [("q1", "?", [("b", start)])])])
    with pytest.raises(InputError) as err:
        read_squad_json(path)
    assert str(err.value) == f"{path}: question 'q1' (data[0].paragraphs[0].qas[0]): {reason}"


def test_invalid_json_names_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"data": [\n{"paragraphs": [}\n]}', encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON") as err:
        read_squad_json(str(path))
    assert err.value.line == 2


def test_examples_from_hub():
    examples, _ = read_squad_json(str(QA / "train.json"))
    hub = datasets.Dataset.from_dict(examples_to_columns(examples))
    got, labelled = examples_from_hub(hub, "squad:train")
    assert labelled and got == examples
    columns = examples_to_columns(examples[:1])
    columns["answers"][0]["answer_start"] = [5]
    with pytest.raises(InputError, match="question 't1' .*does not match the context") as err:
        examples_from_hub(datasets.Dataset.from_dict(columns), "squad:train")
    assert err.value.path == "squad:train"


# --- evaluation sets ------------------------------------------------------------------------------

def test_cross_lingual_xquad_pairs_question_and_paragraph_by_id():
    en, es = load_qa_set("xquad_en", str(QA / "xquad.en.json")), load_qa_set("xquad_es", str(QA / "xquad.es.json"))
    # the question file in another order: pairing goes by id, not position
    shuffled = QASet("xquad_es", es.examples[::-1], es.source)
    q_es = build_cross_lingual(shuffled, en, "xquad_es-q_en-c")
    assert [e.id for e in q_es.examples] == ["x1", "x2", "x3", "x4"]
    assert q_es.examples[0].question == "¿Qué tiene esta ciudad?"
    assert q_es.examples[0].context.startswith("This city has")
    assert q_es.examples[0].answers == ["a beautiful old bridge"]
    assert q_es.examples[2].answers == ["three languages", "three"]
    c_es = build_cross_lingual(en, es, "xquad_en-q_es-c")
    assert c_es.examples[1].question == "When does the train leave?"
    assert c_es.examples[1].context.startswith("Esta ciudad") and c_es.examples[1].answers == ["a las siete"]
    assert all(e.context[s:s + len(t)] == t for e in c_es.examples + q_es.examples
               for t, s in zip(e.answers, e.answer_starts))
    with pytest.raises(InputError, match="question 'x3' of .*xquad.en.json is missing here") as err:
        build_cross_lingual(QASet("es", [e for e in es.examples if e.id != "x3"], "es.json"), en, "bad")
    assert err.value.path == "es.json"
    with pytest.raises(InputError, match="question 'x9' .* not in"):
        build_cross_lingual(QASet("es", es.examples + [QAExample("x9", "?", "c", ["c"], [0])], "es.json"), en, "b")


def test_set_discovery():
    xquad = xquad_sets(str(QA), ["es"])
    assert [s.name for s in xquad] == ["xquad_es", "xquad_es-q_en-c", "xquad_en-q_es-c"]
    assert all(s.metric == "squad" and s.labelled for s in xquad)
    assert [s.name for s in xquad_sets(str(QA), ["en", "es"], cross_lingual=False)] == ["xquad_en", "xquad_es"]
    with pytest.raises(InputError, match="no XQuAD file for language 'vi'"):
        xquad_sets(str(QA), ["vi"])
    mlqa = mlqa_sets(str(QA / "mlqa"), "dev", ["es", "ru"])  # no Russian in MLQA: skipped with a warning
    assert [(s.name, s.metric, s.lang) for s in mlqa] == [
        ("mlqa_es-c_es-q", "mlqa", "es"), ("mlqa_en-c_es-q", "mlqa", "en"), ("mlqa_es-c_en-q", "mlqa", "es")]
    assert mlqa[1].examples[0].question == "¿Dónde duerme el gato?"
    assert mlqa[1].examples[0].answers == ["on the red chair"]
    assert mlqa_sets(str(QA / "mlqa"), "test", ["es"]) == []
    tydi = tydiqa_sets(str(QA), ["es", "ru"])
    assert [(s.name, s.labelled) for s in tydi] == [("tydiqa_ru", False)]
    named = named_sets([f"mlqa_es-c_es-q={QA / 'mlqa/dev/dev-context-es-question-es.json'}",
                        f"squad_en={QA / 'train.json'}"], "--test_sets")
    assert [(s.name, s.metric, s.lang) for s in named] == [("mlqa_es-c_es-q", "mlqa", "es"),
                                                            ("squad_en", "squad", None)]
    with pytest.raises(ValueError, match="NAME=PATH"):
        named_sets([str(QA / "train.json")], "--test_sets")


# --- windows and post-processing ------------------------------------------------------------------

LONG_CONTEXT = " ".join(line.capitalize() + "." for line in fixture_lines("en"))


def span_tokens(offsets, start_char, end_char):
    """Token indices (start, end) of a character span inside one window's context, or None."""
    tokens = [k for k, (s, e) in enumerate(offsets) if s >= 0 and s < end_char and e > start_char]
    if not tokens or offsets[tokens[0]][0] > start_char or offsets[tokens[-1]][1] < end_char:
        return None
    return tokens[0], tokens[-1]


def pointing_logits(offsets, window, start_token, end_token, high=10.0):
    start, end = np.full(offsets.shape[:2], -50.0), np.full(offsets.shape[:2], -50.0)
    start[window, start_token], end[window, end_token] = high, high
    return start, end


def long_context_set(answers, tokenizer):
    examples = [QAExample(f"q{i}", "Where?", LONG_CONTEXT, [a], [LONG_CONTEXT.index(a)])
                for i, a in enumerate(answers)]
    qa_set = QASet("long", examples, "memory")
    return qa_set, validation_features(qa_set, tokenizer, max_seq_length=48, doc_stride=16)


def test_windows_and_answers_across_the_stride(tokenizer):
    """Windows of 48 tokens overlapping by 16: an answer only in the last window, and one that crosses
    the end of the first window (whole only in the second): post-processing returns each gold span
    when the logits point to it, and training labels it in the window that holds it whole."""
    qa_set, feats = long_context_set(["at the hospital near the station"], tokenizer)
    offsets = feats.offsets  # spans are chosen from the windows, so the test holds for any vocabulary
    assert len(offsets) >= 3 and (feats.example_index == 0).all()
    windows = [offsets[w][offsets[w][:, 0] >= 0] for w in range(len(offsets))]
    # consecutive windows overlap by exactly doc_stride context tokens
    assert all((windows[w][-16:] == windows[w + 1][:16]).all() for w in range(len(windows) - 1))

    # 1) a span in the last window only: its context tokens after the overlap with the one before
    new = windows[-1][16:][-3:]
    start_char, end_char = int(new[0][0]), int(new[-1][1])
    answer = LONG_CONTEXT[start_char:end_char]
    holders = [w for w in range(len(offsets)) if span_tokens(offsets[w], start_char, end_char)]
    assert holders == [len(offsets) - 1]
    s, e = span_tokens(offsets[holders[0]], start_char, end_char)
    texts, _ = postprocess_qa_predictions([LONG_CONTEXT], feats.example_index, offsets,
                                          pointing_logits(offsets, holders[0], s, e))
    assert texts == [answer]

    # 2) a span that begins in the first window and ends after it (crosses the stride boundary)
    last = windows[0][-1]
    cross_start = int(windows[0][-3][0])
    cross_end = int(windows[1][list(map(tuple, windows[1])).index(tuple(last)) + 3][1])
    crossing = LONG_CONTEXT[cross_start:cross_end]
    assert span_tokens(offsets[0], cross_start, cross_end) is None
    s1, e1 = span_tokens(offsets[1], cross_start, cross_end)
    start, end = pointing_logits(offsets, 1, s1, e1, high=15.0)
    first = [k for k in range(offsets.shape[1]) if offsets[0, k, 0] >= 0]
    start[0, first[-3]], end[0, first[-1]] = 10.0, 10.0  # the first window's partial span scores lower
    texts, scores = postprocess_qa_predictions([LONG_CONTEXT], feats.example_index, offsets, (start, end))
    assert texts == [crossing] and scores[0] == 30.0
    start[0, first[-3]], end[0, first[-1]] = 20.0, 20.0  # ... unless the model prefers it
    texts, _ = postprocess_qa_predictions([LONG_CONTEXT], feats.example_index, offsets, (start, end))
    assert texts == [LONG_CONTEXT[cross_start:int(last[1])]]

    # training windows: CLS where the window does not hold the whole answer, the span where it does
    batch = examples_to_columns([QAExample("c", "Where?", LONG_CONTEXT, [crossing], [cross_start])])
    train = prepare_train_features(batch, tokenizer, max_seq_length=48, doc_stride=16)
    assert (train["start_positions"][0], train["end_positions"][0]) == (0, 0)
    assert (train["start_positions"][1], train["end_positions"][1]) == (s1, e1)


def test_postprocessing_rules(tokenizer):
    qa_set, feats = long_context_set(["the red chair"], tokenizer)
    offsets = feats.offsets[:1]
    context_tokens = np.flatnonzero(offsets[0, :, 0] >= 0)
    question_token = int(np.flatnonzero(offsets[0, :, 0] < 0)[1])
    a, b = int(context_tokens[2]), int(context_tokens[5])
    start, end = pointing_logits(offsets, 0, a, b)
    start[0, question_token] = end[0, question_token] = 50.0  # outside the context: never an answer
    start[0, b + 3] = 40.0                                     # ends before it starts: never
    texts, scores = postprocess_qa_predictions([LONG_CONTEXT], np.zeros(1, dtype=int), offsets, (start, end))
    assert texts == [LONG_CONTEXT[offsets[0, a, 0]:offsets[0, b, 1]]] and scores[0] == 20.0
    # longer than max_answer_length tokens: the next best pair
    texts, _ = postprocess_qa_predictions([LONG_CONTEXT], np.zeros(1, dtype=int), offsets, (start, end),
                                          max_answer_length=3)
    assert texts != [LONG_CONTEXT[offsets[0, a, 0]:offsets[0, b, 1]]]
    # logits wider than the offsets (Trainer padding with -100) are fine; no valid span at all gives ""
    wide = (np.pad(start, ((0, 0), (0, 7)), constant_values=-100), np.pad(end, ((0, 0), (0, 7)), constant_values=-100))
    texts, _ = postprocess_qa_predictions([LONG_CONTEXT], np.zeros(1, dtype=int), offsets, wide)
    assert texts == [LONG_CONTEXT[offsets[0, a, 0]:offsets[0, b, 1]]]
    nothing = np.full_like(offsets, -1)
    texts, scores = postprocess_qa_predictions(["c"], np.zeros(1, dtype=int), nothing, (start, end))
    assert texts == [""] and scores[0] == -np.inf


def upstream_loop(contexts, example_index, offsets, start_logits, end_logits, n_best=20, max_len=30):
    """utils_qa.postprocess_qa_predictions' search written plainly (one window, one pair at a time)."""
    best = {}
    for f in range(len(offsets)):
        valid = offsets[f, :, 0] >= 0
        starts = np.argsort(start_logits[f])[-1:-n_best - 1:-1]
        ends = np.argsort(end_logits[f])[-1:-n_best - 1:-1]
        for s in starts:
            for e in ends:
                if s >= len(valid) or e >= len(valid) or not valid[s] or not valid[e] or e < s or e - s + 1 > max_len:
                    continue
                score = start_logits[f, s] + end_logits[f, e]
                i = example_index[f]
                if i not in best or score > best[i][0]:
                    best[i] = (score, contexts[i][offsets[f, s, 0]:offsets[f, e, 1]])
    return [best[i][1] if i in best else "" for i in range(len(contexts))]


def test_vectorised_postprocessing_matches_upstream_loop(tokenizer):
    answers = [line.capitalize() for line in fixture_lines("en")[::2]]
    qa_set, feats = long_context_set(answers, tokenizer)
    rng = np.random.default_rng(0)
    for trial in range(3):
        start = rng.normal(size=feats.offsets.shape[:2])
        end = rng.normal(size=feats.offsets.shape[:2])
        contexts = [ex.context for ex in qa_set.examples]
        got, _ = postprocess_qa_predictions(contexts, feats.example_index, feats.offsets, (start, end),
                                            n_best_size=5 + 5 * trial, max_answer_length=4 + trial)
        assert got == upstream_loop(contexts, feats.example_index, feats.offsets, start, end, 5 + 5 * trial, 4 + trial)


def test_postprocessing_scales_to_ten_thousand_questions():
    """12,000 windows of 384 tokens (10,000 questions): one vectorised pass, no per-window Python loop."""
    rng = np.random.default_rng(1)
    n_windows, width = 12_000, 384
    offsets = np.full((n_windows, width, 2), -1, dtype=np.int64)
    chars = np.arange(300) * 5
    offsets[:, 30:330, 0], offsets[:, 30:330, 1] = chars, chars + 4
    example_index = np.minimum(np.arange(n_windows) * 10_000 // n_windows, 9_999)
    start, end = rng.normal(size=(n_windows, width)).astype(np.float32), rng.normal(size=(n_windows, width))
    t0 = time.perf_counter()
    texts, scores = postprocess_qa_predictions(["x" * 1500] * 10_000, example_index, offsets, (start, end))
    elapsed = time.perf_counter() - t0
    assert len(texts) == 10_000 and np.isfinite(scores).all()
    window_scores, s, e = best_spans(start, end, offsets)
    assert ((e >= s) & (e - s < 30) & (s >= 30) & (e < 330)).all()
    assert elapsed < 60, elapsed


# --- the QA trainer -------------------------------------------------------------------------------

def test_qa_trainer_with_zero_weights_is_the_plain_trainer(tmp_path, tiny_model_dir, tokenizer):
    from hf_xladjust.alignment.loss import AlignmentLoss
    from hf_xladjust.alignment.pairs import AlignedPair, AlignedPairDataset
    from hf_xladjust.trainers.qa import QuestionAnsweringTrainer

    examples, _ = read_squad_json(str(QA / "train.json"))
    train = train_features(examples, "train.json", tokenizer, 64, 16)
    eval_set = load_qa_set("xquad_es", str(QA / "xquad.es.json"))
    validation_features(eval_set, tokenizer, 64, 16)
    pairs = [AlignedPair(e.split(), s.split(), [(0, 0), (1, 1)])
             for e, s in zip(fixture_lines("en"), fixture_lines("es"))]

    def run(kind):
        torch.manual_seed(0)
        model = AutoModelForQuestionAnswering.from_pretrained(tiny_model_dir)
        args = TrainingArguments(output_dir=str(tmp_path / kind), per_device_train_batch_size=4, num_train_epochs=1,
                                 learning_rate=1e-3, report_to="none", use_cpu=True, save_strategy="no", seed=3,
                                 disable_tqdm=True)
        common = dict(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer))
        if kind == "plain":
            trainer = Trainer(**common)
        else:
            trainer = QuestionAnsweringTrainer(
                **common, align_dataset=AlignedPairDataset(pairs, tokenizer),
                alignment_loss=AlignmentLoss(None, anchor_weight=0.0, align_weight=0.0), align_batch_size=4,
                post_process_function=lambda qa, feats, preds, stage: EvalPrediction(postprocess_qa_predictions(
                    [ex.context for ex in qa.examples], qa.features.example_index, qa.features.offsets, preds), None))
        trainer.train()
        return trainer, model

    plain, plain_model = run("plain")
    ours, our_model = run("ours")
    for (name, p), q in zip(plain_model.named_parameters(), our_model.parameters()):
        assert torch.equal(p, q), name
    logits = plain.predict(eval_set.features.dataset).predictions
    expected = postprocess_qa_predictions([ex.context for ex in eval_set.examples], eval_set.features.example_index,
                                          eval_set.features.offsets, logits)
    got = ours.predict(eval_set.features.dataset, eval_set).predictions
    assert got[0] == expected[0] and np.array_equal(got[1], expected[1])


# --- run_qa_xl.py ---------------------------------------------------------------------------------

def run_script(monkeypatch, *args, common=COMMON_FLAGS):
    import run_qa_xl

    monkeypatch.setattr(sys, "argv", ["run_qa_xl.py", *map(str, args), *common])
    run_qa_xl.main()


def check_outputs(out, split_sets, samples=None):
    """Every set has its predictions file; all_results' F1/EM are 100 x the means of the per-question ones."""
    results = json.loads((out / "all_results.json").read_text())
    for split, names in split_sets.items():
        for name in names:
            records = [json.loads(ln) for ln in (out / f"predictions_{split}_{name}.jsonl").read_text().splitlines()]
            assert len(records) == results[f"{split}_{name}_samples"] == (samples or len(records))
            assert all(set(r) == {"id", "prediction", "answers", "f1", "em", "score"} for r in records)
            if records[0]["answers"]:
                assert results[f"{split}_{name}_f1"] == pytest.approx(100 * np.mean([r["f1"] for r in records]))
                assert results[f"{split}_{name}_exact_match"] == pytest.approx(
                    100 * np.mean([r["em"] for r in records]))
                assert all(0 <= r["f1"] <= 1 and isinstance(r["em"], bool) for r in records)
            else:
                assert f"{split}_{name}_f1" not in results and all(r["f1"] is None for r in records)
    return results


def test_run_qa_xl_end_to_end(tmp_path, tiny_model_dir, monkeypatch):
    out = tmp_path / "out"
    run_script(monkeypatch, "--model_name_or_path", tiny_model_dir, "--train_file", QA / "train.json",
               "--validation_file", QA / "train.json", "--mlqa_dir", QA / "mlqa", "--xquad_dir", QA,
               "--tydiqa_dir", QA, "--eval_languages", "es", "ru", "--do_train", "--do_eval",
               "--do_predict", "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--output_dir", out,
               "--eval_strategy", "epoch", *WINDOW)
    results = check_outputs(out, {"eval": ["en", "mlqa_es-c_es-q", "mlqa_en-c_es-q", "mlqa_es-c_en-q"],
                                  "test": ["xquad_es", "xquad_es-q_en-c", "xquad_en-q_es-c", "xquad_ru",
                                           "xquad_ru-q_en-c", "xquad_en-q_ru-c", "tydiqa_ru"]})
    assert results["train_samples"] == 12
    # the QA evaluation loop also runs inside training (--eval_strategy), on every validation set
    logged = {k for h in json.loads((out / "trainer_state.json").read_text())["log_history"] for k in h}
    assert {f"eval_{name}_{metric}" for name in ("en", "mlqa_es-c_es-q", "mlqa_en-c_es-q", "mlqa_es-c_en-q")
            for metric in ("f1", "exact_match")} <= logged
    run_args = json.loads((out / "run_args.json").read_text())
    assert run_args["eval_sets"]["eval"]["mlqa_es-c_es-q"] == {
        "source": str(QA / "mlqa/dev/dev-context-es-question-es.json"), "metric": "mlqa", "lang": "es",
        "labelled": True, "questions": 3}
    assert run_args["max_seq_length_used"] == 64 and run_args["continual"] is None
    xl = [json.loads(ln) for ln in (out / "predictions_test_xquad_en-q_es-c.jsonl").read_text().splitlines()]
    assert xl[1]["answers"] == ["a las siete"]  # answers follow the paragraph's language
    # every prediction is a piece of its context
    es = {e.id: e for e in read_squad_json(str(QA / "xquad.es.json"))[0]}
    assert all(r["prediction"] in es[r["id"]].context for r in xl)
    assert (out / "model.safetensors").exists() and (out / "trainer_state.json").exists()

    # the fine-tuned model again, prediction only, on the same questions in a local repository laid out as
    # rajpurkar/squad (config plain_text), read by the real load_dataset
    repo = write_repo(tmp_path / "rajpurkar" / "squad",
                      {"plain_text": {"validation": qa_split(read_squad_json(str(QA / "train.json"))[0])}})
    import run_qa_xl

    scored = []  # the set is scored once: the predictions file reuses the metric step's per-question scores
    monkeypatch.setattr(run_qa_xl, "score_set", lambda qa_set, texts: scored.append(qa_set.name)
                        or score_set(qa_set, texts))
    again = tmp_path / "again"
    run_script(monkeypatch, "--model_name_or_path", out, "--dataset_name", repo, "--do_eval",
               "--max_eval_samples", "5", "--output_dir", again, *WINDOW)
    check_outputs(again, {"eval": ["en"]}, samples=5)
    assert scored == ["en"]
    def answers(path):
        return [{k: r[k] for k in ("id", "prediction", "f1", "em")}
                for r in map(json.loads, path.read_text().splitlines())]

    assert answers(again / "predictions_eval_en.jsonl") == answers(out / "predictions_eval_en.jsonl")[:5]


def test_run_qa_xl_defaults_reach_the_trainer(tmp_path, monkeypatch):
    """lr 3e-5, 2 epochs, batch 32, windows of 384 tokens overlapping by 128, as the Trainer got them."""
    import run_qa_xl

    model_dir = build_tiny_model(tmp_path / "m512", max_positions=512)
    seen = {}

    class Spy(run_qa_xl.QuestionAnsweringTrainer):
        def train(self, *args, **kwargs):
            seen["args"], seen["train"] = self.args, self.train_dataset
            return super().train(*args, **kwargs)

    monkeypatch.setattr(run_qa_xl, "QuestionAnsweringTrainer", Spy)
    long_context = " ".join([LONG_CONTEXT] * 8)
    answer = "at the hospital near the station"
    train = squad_file(tmp_path / "train.json",
                       [(long_context, [("q", "Where?", [(answer, long_context.rindex(answer))])])])
    out = tmp_path / "out"
    run_script(monkeypatch, "--model_name_or_path", model_dir, "--train_file", train, "--do_train",
               "--output_dir", out)
    args = seen["args"]
    assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (3e-5, 2.0, 32)
    ids = seen["train"]["input_ids"]
    assert len(ids) >= 2 and len(ids[0]) == 384
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    question = len(tokenizer("Where?", add_special_tokens=False)["input_ids"])
    context0, context1 = ids[0][question + 2:-1], ids[1][question + 2:-1]
    assert context0[-128:] == context1[:128]  # the stride: 128 context tokens shared by consecutive windows
    assert json.loads((out / "trainer_state.json").read_text())["train_batch_size"] == 32


def test_run_args_record_the_max_seq_length_used(tmp_path, tiny_model_dir, monkeypatch):
    """--max_seq_length over the model's limit is capped: run_args.json records both."""
    out = tmp_path / "out"
    run_script(monkeypatch, "--model_name_or_path", tiny_model_dir, "--train_file", QA / "train.json",
               "--xquad_dir", QA, "--eval_languages", "es", "--no_cross_lingual_eval", "--do_train", "--do_predict",
               "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--max_seq_length", "1000",
               "--doc_stride", "16", "--output_dir", out)
    run_args = json.loads((out / "run_args.json").read_text())
    assert run_args["data"]["max_seq_length"] == 1000 and run_args["max_seq_length_used"] == 64


def test_run_qa_xl_continual(tmp_path, tiny_model_dir, monkeypatch):
    from hf_xladjust.alignment.pairs import AlignedPair, write_aligned_pairs

    pairs = [AlignedPair(e.split(), s.split(), [(k, k) for k in range(min(len(e.split()), len(s.split())))])
             for e, s in zip(fixture_lines("en"), fixture_lines("es"))]
    write_aligned_pairs(str(tmp_path / "pairs.jsonl"), pairs)
    out = tmp_path / "out"
    run_script(monkeypatch, "--model_name_or_path", tiny_model_dir, "--train_file", QA / "train.json",
               "--xquad_dir", QA, "--eval_languages", "es", "--do_train", "--do_predict",
               "--per_device_train_batch_size", "8", "--num_train_epochs", "1", "--aligned_pairs",
               tmp_path / "pairs.jsonl", "--align_batch_size", "4", "--output_dir", out, *WINDOW)
    check_outputs(out, {"test": ["xquad_es", "xquad_es-q_en-c", "xquad_en-q_es-c"]})
    logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert logged and all("align_loss" in h and "anchor_loss" in h for h in logged)
    assert json.loads((out / "run_args.json").read_text())["continual"]["align_weight"] == 0.01


@pytest.mark.parametrize("flags, message", [
    (lambda bad: ("--train_file", bad, "--do_train"),
     "question 't2' (data[0].paragraphs[0].qas[1]): answer 0 'a book' does not match the context at answer_start 3"),
    (lambda bad: ("--test_sets", f"mine={bad}", "--do_predict"), "does not match the context"),
])
def test_run_qa_xl_bad_input_exits_with_file_and_record(tmp_path, tiny_model_dir, monkeypatch, flags, message):
    content = json.loads((QA / "train.json").read_text(encoding="utf-8"))
    content["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] = 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content), encoding="utf-8")
    monkeypatch.setattr(sys, "argv", [str(ROOT / "run_qa_xl.py"), "--model_name_or_path", tiny_model_dir,
                                      *map(str, flags(bad)), "--output_dir", str(tmp_path / "out"), *COMMON_FLAGS])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(ROOT / "run_qa_xl.py"), run_name="__main__")
    assert str(exit_.value.code).startswith(f"run_qa_xl.py: error: {bad}: ") and message in str(exit_.value.code)


def test_run_qa_xl_question_too_long_for_the_window(tmp_path, tiny_model_dir, monkeypatch):
    long_question = " ".join(fixture_lines("en"))
    path = squad_file(tmp_path / "q.json", [("the cat sleeps", [("long-q", long_question, [("cat", 4)])])])
    with pytest.raises(InputError, match="question 'long-q' has .* tokens") as err:
        run_script(monkeypatch, "--model_name_or_path", tiny_model_dir, "--test_sets", f"x={path}", "--do_predict",
                   "--output_dir", tmp_path / "out", *WINDOW)
    assert err.value.path == path


# --- real data ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_run_qa_xl_on_shared_data(tmp_path, shared_data, monkeypatch):
    """Train on 64 SQuAD questions; evaluate XQuAD es (40 questions) in both cross-lingual directions,
    MLQA dev es-es and its cross-lingual files, TyDi QA ru (no gold answers in this copy)."""
    model_dir = build_tiny_model(tmp_path / "m512", max_positions=512)
    out = tmp_path / "out"
    run_script(monkeypatch, "--model_name_or_path", model_dir, "--train_file", shared_data / "squad/train-v1.1.json",
               "--max_train_samples", "64", "--xquad_dir", shared_data / "xquad", "--mlqa_dir", shared_data / "mlqa",
               "--tydiqa_dir", shared_data / "tydiqa", "--eval_languages", "es", "ru", "--do_train", "--do_eval",
               "--do_predict", "--max_eval_samples", "40", "--max_predict_samples", "40", "--doc_stride", "64",
               "--per_device_train_batch_size", "16", "--num_train_epochs", "1", "--output_dir", out)
    results = check_outputs(out, {
        "eval": ["mlqa_es-c_es-q", "mlqa_en-c_es-q", "mlqa_es-c_en-q"],
        "test": ["xquad_es", "xquad_es-q_en-c", "xquad_en-q_es-c", "xquad_ru", "xquad_ru-q_en-c", "xquad_en-q_ru-c",
                 "tydiqa_ru"]}, samples=40)
    assert results["train_samples"] == 64 and "test_tydiqa_ru_f1" not in results
    en = {e.id: e for e in read_squad_json(str(shared_data / "xquad/xquad.en.json"))[0]}
    es = {e.id: e for e in read_squad_json(str(shared_data / "xquad/xquad.es.json"))[0]}
    for line in (out / "predictions_test_xquad_es-q_en-c.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert rec["answers"] == en[rec["id"]].answers and rec["prediction"] in en[rec["id"]].context
    for line in (out / "predictions_test_xquad_en-q_es-c.jsonl").read_text().splitlines():
        rec = json.loads(line)
        assert rec["answers"] == es[rec["id"]].answers and rec["prediction"] in es[rec["id"]].context


@pytest.mark.slow
def test_run_qa_xl_two_processes(tmp_path, tiny_model_dir, monkeypatch):
    """`accelerate launch` with two gloo processes: training runs, and the windows' logits gathered from
    both ranks come back in order: the predictions equal those of one process with the saved model."""
    import os
    import subprocess

    from conftest import free_port

    out = tmp_path / "ddp"
    data = ("--xquad_dir", str(QA), "--eval_languages", "es", "ru", "--do_predict", *WINDOW)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()), str(ROOT / "run_qa_xl.py"), "--model_name_or_path", tiny_model_dir,
         "--train_file", str(QA / "train.json"), "--do_train", "--per_device_train_batch_size", "4",
         "--per_device_eval_batch_size", "3", "--output_dir", str(out), *data, *COMMON_FLAGS],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = ["xquad_es", "xquad_es-q_en-c", "xquad_en-q_es-c", "xquad_ru", "xquad_ru-q_en-c", "xquad_en-q_ru-c"]
    check_outputs(out, {"test": names}, samples=4)
    single = tmp_path / "single"
    run_script(monkeypatch, "--model_name_or_path", out, "--output_dir", single, *data)
    for name in names:
        def answers(path):
            return [(r["id"], r["prediction"], r["f1"]) for r in map(json.loads, path.read_text().splitlines())]

        assert answers(out / f"predictions_test_{name}.jsonl") == answers(single / f"predictions_test_{name}.jsonl")
