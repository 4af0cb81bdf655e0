"""WikiANN NER: tsv/Hub reading, first-subword label alignment, truncated words, token-level and entity-level
scores on a hand-computed case, and run_ner_xl.py end to end (plain, Hub, continual, errors, real data)."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import FIXTURES, fixture_lines, free_port
from hub_repos import ner_split, write_repo
from transformers import AutoConfig, AutoTokenizer, BertConfig

from hf_xladjust.errors import InputError
from hf_xladjust.evaluation.tagging import counts, entity_scores, tagging_metrics, token_scores
from hf_xladjust.tasks.ner import (
    LABELS,
    NERExample,
    encode_examples,
    examples_from_hub,
    model_label_ids,
    read_ner_tsv,
    word_predictions,
    write_predictions,
)

ROOT = Path(__file__).resolve().parents[1]
NER = FIXTURES / "ner"
COMMON_FLAGS = ("--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--save_strategy", "no",
                "--logging_steps", "1")
LABEL_TO_ID = {name: i for i, name in enumerate(LABELS)}


def write_tsv(path, sentences):
    """Sentences of (token, tag) pairs (tag None: a token-only line) as an XTREME tsv file."""
    path.write_text("\n\n".join("\n".join(tok if tag is None else f"{tok}\t{tag}" for tok, tag in s)
                                for s in sentences) + "\n", encoding="utf-8")
    return path


# --- reading ---------------------------------------------------------------------------------------

def test_read_labelled_prefixed_and_unlabelled_files():
    es = read_ner_tsv(str(NER / "dev-es.tsv"))
    assert len(es) == 4 and [ex.id for ex in es] == [0, 1, 2, 3]
    assert es[0].tokens == ["María", "López", "lee", "un", "libro", "en", "Madrid"]
    assert es[0].tags == ["B-PER", "I-PER", "O", "O", "O", "O", "B-LOC"]
    assert (es[0].line, es[1].line, es[2].line) == (1, 9, 17)  # first word of each sentence
    ru = read_ner_tsv(str(NER / "dev-ru.tsv"), lang="ru")  # every token carries "ru:": removed
    assert ru[0].tokens[:2] == ["Мария", "читает"] and ru[2].tokens[0] == "Google"
    with pytest.raises(InputError, match="prefix 'ru:', but the file is read as 'es'") as err:
        read_ner_tsv(str(NER / "dev-ru.tsv"), lang="es")
    assert err.value.line == 1
    test = read_ner_tsv(str(NER / "test-es.nolabels.tsv"))
    assert [ex.tags for ex in test] == [None, None, None] and test[2].tokens == ["Google", "abrió", "una", "oficina"]


def test_read_tolerates_crlf_bom_and_extra_blank_lines(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_bytes("\ufeffParis\tB-LOC\r\nis\tO\r\n\r\n\r\nhttp:x\tO\r\n".encode("utf-8"))
    got = read_ner_tsv(str(path))
    assert [(ex.tokens, ex.tags, ex.line) for ex in got] == [(["Paris", "is"], ["B-LOC", "O"], 1),
                                                            (["http:x"], ["O"], 5)]
    # a token that merely looks like "xx:..." among others without it: nothing is stripped
    mixed = write_tsv(tmp_path / "m.tsv", [[("en:a", "O"), ("b", "O")]])
    assert read_ner_tsv(str(mixed))[0].tokens == ["en:a", "b"]


@pytest.mark.parametrize("content, line, message", [
    ("a\tO\nb\tO\tx\n", 2, "expected token<TAB>tag (or a token alone), got 3 fields"),
    ("a\tO\n\nb\tB-MISC\n", 3, "unknown tag 'B-MISC'; expected one of O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC"),
    ("a\tO\nb\n", 2, "a line without a tag in a labelled file"),
    ("a\nb\tO\n", 2, "a tagged line in a file whose first line has no tag"),
    ("a\tO\n\tO\n", 2, "empty token"),
    ("a\tO\nb\t \n", 2, "empty tag"),
])
def test_read_errors_name_file_and_line(tmp_path, content, line, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_ner_tsv(str(path))
    assert str(err.value) == f"{path}:{line}: {message}"


def test_read_empty_missing_and_undecodable_files(tmp_path):
    for content in ("", "\n\n  \n"):
        (tmp_path / "empty.tsv").write_text(content)
        with pytest.raises(InputError, match="no sentences") as err:
            read_ner_tsv(str(tmp_path / "empty.tsv"))
        assert str(err.value).startswith(f"{tmp_path / 'empty.tsv'}: ")
    with pytest.raises(InputError, match="cannot read"):
        read_ner_tsv(str(tmp_path / "absent.tsv"))
    (tmp_path / "latin1.tsv").write_bytes("a\tO\nca\xf1a\tO\n".encode("latin-1"))
    with pytest.raises(InputError, match="UTF-8") as err:
        read_ner_tsv(str(tmp_path / "latin1.tsv"))
    assert err.value.line == 2


def hub_split(examples, names=LABELS):
    """A Dataset shaped like a split of the Hub's `wikiann` (a sequence of ClassLabel `ner_tags`)."""
    features = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                  "ner_tags": datasets.Sequence(datasets.ClassLabel(names=list(names))),
                                  "langs": datasets.Sequence(datasets.Value("string"))})
    return datasets.Dataset.from_dict(
        {"tokens": [ex.tokens for ex in examples],
         "ner_tags": [[list(names).index(t) for t in ex.tags] for ex in examples],
         "langs": [["xx"] * len(ex.tokens) for ex in examples]}, features=features)


def test_examples_from_hub():
    examples = read_ner_tsv(str(NER / "dev-es.tsv"))
    # ClassLabel ids are translated by name, whatever the dataset's order
    shuffled = ("I-LOC", "B-LOC", "O", "B-PER", "I-PER", "B-ORG", "I-ORG")
    got = examples_from_hub(hub_split(examples, shuffled), "hub")
    assert [(e.id, e.tokens, e.tags) for e in got] == [(e.id, e.tokens, e.tags) for e in examples]
    with pytest.raises(InputError, match=r"unknown tag\(s\) \['B-MISC', 'I-MISC'\]") as err:
        examples_from_hub(hub_split([], LABELS + ("B-MISC", "I-MISC")), "conll[en]:test")
    assert str(err.value).startswith("conll[en]:test: ")
    with pytest.raises(InputError, match="missing column"):
        examples_from_hub(hub_split(examples).remove_columns("ner_tags"), "hub")


# --- label alignment and truncation ---------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def expected_alignment(tokenizer, words, tags, max_length, label_all_tokens):
    """Labels, word_index and the number of cut-off words, built from `tokenizer.tokenize` of each word
    alone: [CLS], the subwords that fit in `max_length - 2`, [SEP]."""
    labels, index = [], []
    for w, (word, tag) in enumerate(zip(words, tags)):
        for k in range(len(tokenizer.tokenize(word))):
            index.append(w if k == 0 else -1)
            tag_k = tag if k == 0 else (tag.replace("B-", "I-") if label_all_tokens else None)
            labels.append(LABEL_TO_ID[tag_k] if tag_k else -100)
    labels, index = labels[:max_length - 2], index[:max_length - 2]
    truncated = len(words) - len({w for w in index if w >= 0})
    return [-100] + labels + [-100], [-1] + index + [-1], truncated


def test_first_subword_alignment_and_truncation(tokenizer):
    words = ["Maria", "Lopez", "reads", "in", "Madrid", "and", "Moscow"]
    tags = ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "B-LOC"]
    pieces = [tokenizer.tokenize(w) for w in words]
    assert max(map(len, pieces)) >= 3  # the fixture checks words of several subwords
    n_sub = sum(map(len, pieces))
    for label_all_tokens in (False, True):
        for max_length in (64, n_sub, 6):  # whole sentence; cut inside; only a few words left
            enc = encode_examples(tokenizer, [words], [tags], LABEL_TO_ID, max_length, label_all_tokens)
            labels, index, truncated = expected_alignment(tokenizer, words, tags, max_length, label_all_tokens)
            assert enc["labels"][0] == labels, (label_all_tokens, max_length)
            assert enc["word_index"][0] == index
            assert enc["truncated_words"][0] == truncated and enc["untokenized_words"][0] == 0
            assert len(enc["input_ids"][0]) == len(labels) <= max_length
    # with everything kept, each word's first subword carries its tag; continuation subwords -100
    enc = encode_examples(tokenizer, [words], [tags], LABEL_TO_ID, 64)
    firsts = [i for i, w in enumerate(enc["word_index"][0]) if w >= 0]
    assert [enc["labels"][0][i] for i in firsts] == [LABEL_TO_ID[t] for t in tags]
    assert sum(lab != -100 for lab in enc["labels"][0]) == len(words)
    # a short limit: the words past it are counted, none of them labelled
    short = encode_examples(tokenizer, [words], [tags], LABEL_TO_ID, 6)
    kept = {w for w in short["word_index"][0] if w >= 0}
    assert short["truncated_words"][0] == len(words) - len(kept) > 0
    # unlabelled sentences: no labels, the same word_index
    unlabelled = encode_examples(tokenizer, [words], None, None, 64)
    assert "labels" not in unlabelled and unlabelled["word_index"] == enc["word_index"]


def test_word_predictions_back_to_words():
    # two sentences; -1 marks special tokens and continuation subwords; positions past a row are padding
    word_index = [[-1, 0, -1, 1, 2, -1], [-1, 0, 1, -1]]
    pred_ids = np.array([[9, 3, 9, 4, 0, 9], [9, 5, 6, 9, 9, 9]])
    got = word_predictions(pred_ids, word_index, n_words=[4, 3], fill_id=0)
    # sentence 0: its 4th word was cut off (no position): the fill id; sentence 1: its 3rd likewise
    assert [g.tolist() for g in got] == [[3, 4, 0, 0], [5, 6, 0]]
    with pytest.raises(ValueError, match="predictions of shape"):
        word_predictions(pred_ids[:, :3], word_index, [4, 3], 0)


# --- scores ----------------------------------------------------------------------------------------

GOLD = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O", "O"]]
PRED = [["B-PER", "B-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "B-LOC", "I-PER"]]


def test_token_level_micro_f1_hand_computed():
    # sentence 0: B-PER ok (tp), I-PER->B-PER (fp and fn), O ok (not counted), B-LOC ok (tp)
    # sentence 1: B-ORG, I-ORG ok (2 tp), O->B-LOC (fp), O->I-PER (fp)
    assert counts(GOLD[0], PRED[0]) == (2, 1, 1) and counts(GOLD[1], PRED[1]) == (2, 2, 0)
    scores = token_scores(GOLD, PRED)
    assert scores["token_precision"] == pytest.approx(4 / 7)
    assert scores["token_recall"] == pytest.approx(4 / 5)
    assert scores["token_f1"] == pytest.approx(2 / 3)  # 2*4 / (2*4 + 3 + 1)
    assert scores["accuracy"] == pytest.approx(5 / 8)  # O included
    assert token_scores([["O", "O"]], [["O", "O"]])["token_f1"] == 0.0  # nothing to find, nothing found


def test_seqeval_entity_f1_hand_computed():
    # gold entities: PER[0:2], LOC[3] | ORG[0:2]                                  -> 3
    # predicted:     PER[0], PER[1] (B- opens a new one), LOC[3] | ORG[0:2], LOC[2], PER[3] -> 6
    # exact matches: LOC[3] of sentence 0 and ORG[0:2] of sentence 1            -> 2
    scores = entity_scores(GOLD, PRED, per_type=True)
    assert scores["precision"] == pytest.approx(2 / 6)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(4 / 9)
    from seqeval.metrics import f1_score, precision_score, recall_score

    assert (scores["precision"], scores["recall"], scores["f1"]) == pytest.approx(
        (precision_score(GOLD, PRED), recall_score(GOLD, PRED), f1_score(GOLD, PRED)))
    assert (scores["PER_f1"], scores["ORG_f1"], scores["PER_number"]) == (0.0, 1.0, 1)
    assert scores["LOC_precision"] == pytest.approx(1 / 2) and scores["LOC_recall"] == 1.0
    merged = tagging_metrics(GOLD, PRED)
    assert set(merged) == {"token_precision", "token_recall", "token_f1", "accuracy", "precision", "recall", "f1"}
    with pytest.raises(ValueError, match="sentence 1: 4 gold tags but 3"):
        tagging_metrics(GOLD, [PRED[0], PRED[1][:3]])


def test_write_predictions(tmp_path):
    examples = [NERExample(0, ["a", "b"], ["B-PER", "O"]), NERExample(1, ["c"], None)]
    write_predictions(str(tmp_path / "p.jsonl"), examples, [["B-PER", "O"], ["O"]], [0, 1])
    records = [json.loads(ln) for ln in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert records == [{"id": 0, "tokens": ["a", "b"], "gold": ["B-PER", "O"], "pred": ["B-PER", "O"],
                        "truncated_words": 0},
                       {"id": 1, "tokens": ["c"], "gold": None, "pred": ["O"], "truncated_words": 1}]
    with pytest.raises(ValueError, match="1 predicted tags for 2 words"):
        write_predictions(str(tmp_path / "q.jsonl"), examples[:1], [["O"]])


def test_model_label_ids():
    config = BertConfig()  # a bare encoder: LABEL_0, LABEL_1
    assert model_label_ids(config, LABELS, "enc") == LABEL_TO_ID
    assert config.id2label == dict(enumerate(LABELS)) and config.num_labels == 7
    # a tagger with the same tags in another order keeps its ids
    order = ("B-LOC", "I-LOC", "O", "B-PER", "I-PER", "B-ORG", "I-ORG")
    tagger = BertConfig(id2label=dict(enumerate(order)), architectures=["BertForTokenClassification"])
    assert model_label_ids(tagger, LABELS, "t") == {name: i for i, name in enumerate(order)}
    conll = BertConfig(id2label=dict(enumerate(LABELS + ("B-MISC", "I-MISC"))),
                       architectures=["BertForTokenClassification"])
    with pytest.raises(InputError, match="do not match the data's .*: not in the data: B-MISC, I-MISC") as err:
        model_label_ids(conll, LABELS, "conll-model")
    assert err.value.path == "conll-model"
    with pytest.raises(InputError, match="head has 2 labels"):
        model_label_ids(BertConfig(architectures=["BertForTokenClassification"]), LABELS, "m")


# --- run_ner_xl.py ---------------------------------------------------------------------------------

def run_script(monkeypatch, *args):
    import run_ner_xl

    monkeypatch.setattr(sys, "argv", ["run_ner_xl.py", *map(str, args), *COMMON_FLAGS])
    run_ner_xl.main()


def check_outputs(out, split, langs, labelled=True):
    """Every prediction file is there, one record per sentence, and the scores in all_results.json
    are those recomputed from the prediction files."""
    results = json.loads((out / "all_results.json").read_text())
    for lang in langs:
        prefix = f"{split}_{lang}"
        records = [json.loads(ln) for ln in (out / f"predictions_{prefix}.jsonl").read_text().splitlines()]
        assert len(records) == results[f"{prefix}_samples"] and [r["id"] for r in records] == list(range(len(records)))
        assert all(len(r["pred"]) == len(r["tokens"]) and set(r["pred"]) <= set(LABELS) for r in records)
        assert results[f"{prefix}_words"] == sum(len(r["tokens"]) for r in records)
        assert results[f"{prefix}_truncated_words"] == sum(r["truncated_words"] for r in records)
        for r in records:  # a cut-off word is predicted O
            assert r["truncated_words"] == 0 or set(r["pred"][-r["truncated_words"]:]) == {"O"}
        if labelled:
            expected = tagging_metrics([r["gold"] for r in records], [r["pred"] for r in records])
            for name, value in expected.items():
                assert results[f"{prefix}_{name}"] == pytest.approx(value), name
        else:
            assert all(r["gold"] is None for r in records)
            assert f"{prefix}_f1" not in results and f"{prefix}_token_f1" not in results
    return results


def train_file_of(tmp_path, n=40):
    """A training set of `n` sentences: the hand-made fixture sentences repeated."""
    sentences = read_ner_tsv(str(NER / "train-en.tsv"))
    return write_tsv(tmp_path / "train-en.tsv", [list(zip(s.tokens, s.tags))
                                                 for s in (sentences * n)[:n]])


def test_run_ner_xl_end_to_end_defaults_and_hub(tmp_path, tiny_model_dir, monkeypatch, caplog):
    out = tmp_path / "out"
    train = train_file_of(tmp_path)
    # the paper's hyper-parameters are the defaults; --max_seq_length 12 makes the fixtures' longer sentences
    # lose words, which must still be scored
    run_script(monkeypatch, "--model_name_or_path", tiny_model_dir, "--train_file", train,
               "--validation_file_pattern", NER / "dev-{lang}.tsv",
               "--test_file_pattern", NER / "test-{lang}.nolabels.tsv", "--eval_languages", "es", "ru",
               "--max_seq_length", "12", "--do_train", "--do_eval", "--do_predict", "--output_dir", out)
    results = check_outputs(out, "eval", ["en", "es", "ru"])
    check_outputs(out, "test", ["en", "es", "ru"], labelled=False)
    assert results["train_samples"] == 40 and results["eval_es_samples"] == 4 and results["eval_ru_samples"] == 3
    assert results["eval_es_truncated_words"] > 0 and results["eval_es_truncated_sentences"] > 0
    assert "test-es.nolabels.tsv has no tags: predictions only, no score is computed for test_es" in caplog.text
    # what the Trainer applied: lr 2e-5 linear to 0, 3 epochs, batch 32 (40 sentences: 2 steps an epoch)
    state = json.loads((out / "trainer_state.json").read_text())
    assert (state["train_batch_size"], state["num_train_epochs"], state["max_steps"]) == (32, 3, 6)
    lrs = [h["learning_rate"] for h in state["log_history"] if "learning_rate" in h]
    assert len(lrs) == 6 and lrs[0] in (pytest.approx(2e-5), pytest.approx(2e-5 * 5 / 6))
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    run_args = json.loads((out / "run_args.json").read_text())
    training = run_args["training"]
    assert (training["learning_rate"], training["adam_epsilon"], training["max_grad_norm"]) == (2e-5, 1e-6, 0.0)
    assert run_args["data"]["max_seq_length"] == 12 and run_args["continual"] is None
    config = AutoConfig.from_pretrained(out)
    assert config.id2label == dict(enumerate(LABELS))
    # the default maximum length is 128 (the tiny model allows 64: the run says so and uses 64)
    from run_ner_xl import DataTrainingArguments, NERTrainingArguments

    assert DataTrainingArguments().max_seq_length == 128
    assert NERTrainingArguments(output_dir=str(tmp_path / "x")).per_device_train_batch_size == 32

    # the fine-tuned model again, without training, on the same sentences in a local repository laid out as
    # unimelb-nlp/wikiann (one config per language), read by the real load_dataset
    repo = write_repo(tmp_path / "unimelb-nlp" / "wikiann",
                      {lang: {"validation": ner_split(read_ner_tsv(str(NER / f"dev-{lang}.tsv"), lang=lang), lang)}
                       for lang in ("en", "ru")})
    again = tmp_path / "again"
    run_script(monkeypatch, "--model_name_or_path", out, "--dataset_name", repo, "--eval_languages", "ru",
               "--max_seq_length", "12", "--do_eval", "--max_eval_samples", "2", "--output_dir", again)
    check_outputs(again, "eval", ["en", "ru"])
    for lang in ("en", "ru"):  # same model, same sentences: the same predictions
        first = [json.loads(ln)["pred"] for ln in (out / f"predictions_eval_{lang}.jsonl").read_text().splitlines()]
        hub = [json.loads(ln)["pred"] for ln in (again / f"predictions_eval_{lang}.jsonl").read_text().splitlines()]
        assert hub == first[:2]


def test_run_args_record_the_max_seq_length_used(tmp_path, tiny_model_dir, monkeypatch):
    """--max_seq_length over the model's limit is capped: run_args.json records both."""
    out = tmp_path / "out"
    run_script(monkeypatch, "--model_name_or_path", tiny_model_dir, "--train_file", train_file_of(tmp_path, 8),
               "--validation_file_pattern", NER / "dev-{lang}.tsv", "--eval_languages", "es", "--do_train",
               "--do_eval", "--per_device_train_batch_size", "8", "--num_train_epochs", "1",
               "--max_seq_length", "1000", "--output_dir", out)
    run_args = json.loads((out / "run_args.json").read_text())
    assert run_args["data"]["max_seq_length"] == 1000 and run_args["max_seq_length_used"] == 64


def test_run_ner_xl_continual(tmp_path, tiny_model_dir, monkeypatch):
    from hf_xladjust.alignment.pairs import AlignedPair, write_aligned_pairs

    pairs = [AlignedPair(e.split(), s.split(), [(k, k) for k in range(min(len(e.split()), len(s.split())))])
             for e, s in zip(fixture_lines("en"), fixture_lines("es"))]
    write_aligned_pairs(str(tmp_path / "pairs.jsonl"), pairs)
    out = tmp_path / "out"
    run_script(monkeypatch, "--model_name_or_path", tiny_model_dir, "--train_file", train_file_of(tmp_path, 16),
               "--validation_file_pattern", NER / "dev-{lang}.tsv", "--eval_languages", "es", "--do_train",
               "--do_eval", "--per_device_train_batch_size", "8", "--num_train_epochs", "1",
               "--eval_strategy", "epoch", "--aligned_pairs", tmp_path / "pairs.jsonl", "--align_batch_size", "4",
               "--output_dir", out)
    check_outputs(out, "eval", ["en", "es"])
    logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(logged) == 2 and all("align_loss" in h and "anchor_loss" in h for h in logged)
    assert json.loads((out / "run_args.json").read_text())["continual"]["align_weight"] == 0.01
    # --eval_strategy epoch: the in-training evaluation scores the labelled subwords of every dev set
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    results = json.loads((out / "all_results.json").read_text())
    for lang in ("en", "es"):
        # at the end of training the subword-level scores equal the word-level ones (no word is cut here)
        last = [h for h in history if f"eval_{lang}_token_f1" in h][-1]
        assert results[f"eval_{lang}_truncated_words"] == 0
        for name in ("token_f1", "f1", "precision", "accuracy"):
            assert last[f"eval_{lang}_{name}"] == pytest.approx(results[f"eval_{lang}_{name}"])


def test_run_ner_xl_unknown_tag_exits_with_file_and_line(tmp_path, tiny_model_dir, monkeypatch):
    bad = write_tsv(tmp_path / "dev-es.tsv", [[("Madrid", "B-LOC")], [("en", "O"), ("Roma", "B-CITY")]])
    write_tsv(tmp_path / "dev-en.tsv", [[("Paris", "B-LOC")]])
    monkeypatch.setattr(sys, "argv", [str(ROOT / "run_ner_xl.py"), "--model_name_or_path", tiny_model_dir,
                                      "--validation_file_pattern", str(tmp_path / "dev-{lang}.tsv"),
                                      "--eval_languages", "es", "--do_eval", "--output_dir", str(tmp_path / "out"),
                                      *COMMON_FLAGS])
    with pytest.raises(SystemExit) as exit_:  # the script's `if __name__ == "__main__":` block
        runpy.run_path(str(ROOT / "run_ner_xl.py"), run_name="__main__")
    assert exit_.value.code == (f"run_ner_xl.py: error: {bad}:4: unknown tag 'B-CITY'; expected one of "
                                "O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC")


def test_run_ner_xl_checkpoint_with_other_labels(tmp_path, tiny_model_dir, monkeypatch):
    from transformers import AutoModelForTokenClassification

    names = ("O", "B-MISC", "I-MISC")
    model = AutoModelForTokenClassification.from_pretrained(
        tiny_model_dir, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model.save_pretrained(tmp_path / "misc")
    with pytest.raises(InputError, match="do not match the data's") as err:
        run_script(monkeypatch, "--model_name_or_path", tmp_path / "misc", "--tokenizer_name", tiny_model_dir,
                   "--validation_file_pattern", NER / "dev-{lang}.tsv", "--eval_languages", "es", "--do_eval",
                   "--output_dir", tmp_path / "out")
    assert err.value.path == str(tmp_path / "misc")


@pytest.mark.slow
def test_run_ner_xl_two_processes(tmp_path, tiny_model_dir, monkeypatch):
    """`accelerate launch` with two gloo processes (--multi_gpu without GPUs; accelerate's --cpu starts one):
    sets of 3 and 4 sentences are split over the ranks and gathered back, and the predictions are those of
    the saved model evaluated again in one process."""
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "--main_process_port", str(free_port()), str(ROOT / "run_ner_xl.py"),
         "--model_name_or_path", tiny_model_dir, "--train_file", str(train_file_of(tmp_path, 16)),
         "--validation_file_pattern", str(NER / "dev-{lang}.tsv"), "--eval_languages", "es", "ru",
         "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "2", "--num_train_epochs", "1",
         "--do_train", "--do_eval", "--output_dir", str(out), *COMMON_FLAGS],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 2  # 16 / (4 x 2 ranks)
    check_outputs(out, "eval", ["en", "es", "ru"])
    again = tmp_path / "again"
    run_script(monkeypatch, "--model_name_or_path", out, "--validation_file_pattern", NER / "dev-{lang}.tsv",
               "--eval_languages", "es", "ru", "--do_eval", "--output_dir", again)
    for lang in ("en", "es", "ru"):
        assert ((out / f"predictions_eval_{lang}.jsonl").read_text()
                == (again / f"predictions_eval_{lang}.jsonl").read_text())


# --- real data ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_run_ner_xl_on_shared_wikiann(tmp_path, tiny_model_dir, shared_data, monkeypatch):
    """300 English training sentences, then the first 50 dev sentences of every language and the first 20
    of every unlabelled test file; every result and prediction file is written."""
    wikiann = shared_data / "wikiann"
    langs = ["en", "es", "ru", "vi", "hi"]
    out = tmp_path / "out"
    run_script(monkeypatch, "--model_name_or_path", tiny_model_dir, "--train_file", wikiann / "train-en.tsv",
               "--max_train_samples", "300", "--validation_file_pattern", str(wikiann / "dev-{lang}.tsv"),
               "--max_eval_samples", "50", "--test_file_pattern", str(wikiann / "test-{lang}.nolabels.tsv"),
               "--max_predict_samples", "20", "--do_train", "--do_eval", "--do_predict", "--logging_steps", "5",
               "--output_dir", out)
    results = check_outputs(out, "eval", langs)
    check_outputs(out, "test", langs, labelled=False)
    assert results["train_samples"] == 300
    for lang in langs:
        assert results[f"eval_{lang}_samples"] == 50 and results[f"test_{lang}_samples"] == 20
        assert 0 <= results[f"eval_{lang}_token_f1"] <= 1 and 0 <= results[f"eval_{lang}_f1"] <= 1
        gold = read_ner_tsv(str(wikiann / f"dev-{lang}.tsv"))[:50]
        records = [json.loads(ln) for ln in (out / f"predictions_eval_{lang}.jsonl").read_text().splitlines()]
        assert [r["tokens"] for r in records] == [ex.tokens for ex in gold]
        assert [r["gold"] for r in records] == [ex.tags for ex in gold]
    for name in ("all_results.json", "eval_results.json", "test_results.json", "train_results.json",
                 "trainer_state.json", "run_args.json", "config.json", "model.safetensors"):
        assert (out / name).is_file(), name
