"""Extractive QA for zero-shot transfer: SQuAD-format reading with validation, the evaluation sets
(XQuAD, cross-lingual XQuAD, MLQA, TyDi QA GoldP, any named file), features with a document stride,
post-processing of start/end logits into answer spans, and per-question prediction files.

Features and post-processing follow the HF example `run_qa.py` / `utils_qa.py`: a question and its
context are tokenised into windows of `max_seq_length` tokens that overlap by `doc_stride` tokens; a
training window whose context does not hold the whole (first) gold answer is labelled with the CLS
position. At evaluation, each window proposes the pairs of its `n_best_size` highest start and end
logits that lie in the context, end at or after the start and span at most `max_answer_length`
tokens; the question's answer is the context text of the highest-scoring pair (start + end logit)
over all its windows. Here that search is one numpy computation over all windows at once.

Cross-lingual XQuAD: the XQuAD files are translations of the same 1,190 questions with the same ids,
so question-in-X with the English paragraph (`xquad_X-q_en-c`) and the English question with the
paragraph in X (`xquad_en-q_X-c`) are built by id; the answers are those of the paragraph's language.
MLQA ships its combinations as files named `{dev,test}-context-C-question-Q.json` (`mlqa_C-c_Q-q`).
"""
import json
import logging
import os
import re
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from hf_xladjust.errors import InputError
from hf_xladjust.evaluation.qa_metrics import MLQA_LANGUAGES, qa_scores
from hf_xladjust.files import InputPath, write_jsonl

logger = logging.getLogger(__name__)

SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MLQA_SET_NAME = re.compile(r"^mlqa_([a-z]+)-c_([a-z]+)-q$")
MLQA_FILE = "{split}-context-{context}-question-{question}.json"
XQUAD_FILE = "xquad.{lang}.json"
TYDIQA_FILE = "tydiqa.goldp.{lang}.dev.json"


@dataclass
class QAExample:
    """One question. `answers`/`answer_starts`: gold texts and their character offsets in `context`
    (empty for an unlabelled set)."""

    id: str
    question: str
    context: str
    answers: List[str]
    answer_starts: List[int]
    title: str = ""


@dataclass
class QAFeatures:
    """The tokenised windows of a set: `dataset` holds the model inputs only; `example_index` (per
    window, the index of its question) and `offsets` (windows x tokens x 2 character offsets into the
    context, -1 for tokens outside it, padding included) are what post-processing needs."""

    dataset: object
    example_index: np.ndarray
    offsets: np.ndarray


@dataclass
class QASet:
    """An evaluation set: its questions, where they come from (for messages), and how it is scored:
    `metric` "squad" (SQuAD v1.1) or "mlqa" (MLQA's normalisation for `lang`, the context language).
    An unlabelled set (no gold answer anywhere) gets predictions but no score."""

    name: str
    examples: List[QAExample]
    source: str
    metric: str = "squad"
    lang: Optional[str] = None
    labelled: bool = True
    features: Optional[QAFeatures] = field(default=None, repr=False)

    def head(self, n: Optional[int]) -> "QASet":
        """The first `n` questions (all when `n` is None)."""
        return self if n is None else replace(self, examples=self.examples[:n], features=None)


# ---- reading -------------------------------------------------------------------------------------

def _where(qa_id, path_in_file: str) -> str:
    return f"question {qa_id!r} ({path_in_file})" if qa_id is not None else path_in_file


def check_examples(examples: Sequence[QAExample], source: str, where: Optional[Sequence[str]] = None,
                   require_answers: bool = False) -> bool:
    """Validate questions read from `source`; returns whether the set is labelled.

    A set is unlabelled when no question has a non-empty gold answer (MLQA test and TyDi QA dev copies
    without answers); otherwise every question needs at least one answer, every answer a non-empty
    text found at its `answer_start` in the context. Ids must be unique. Errors name the question id
    (and its place in the file, `where`)."""
    if not examples:
        raise InputError("no questions", source)
    labelled = any(t for ex in examples for t in ex.answers)
    if require_answers and not labelled:
        raise InputError("no gold answers in the whole set (an unlabelled file cannot be trained on)", source)
    seen = {}
    for i, ex in enumerate(examples):
        loc = _where(ex.id, where[i] if where else f"record {i}")
        if ex.id in seen:
            raise InputError(f"{loc}: duplicate id (also record {seen[ex.id]})", source)
        seen[ex.id] = i
        if not ex.question.strip():
            raise InputError(f"{loc}: empty question", source)
        if not ex.context.strip():
            raise InputError(f"{loc}: empty context", source)
        if not labelled:
            continue
        if not ex.answers:
            raise InputError(f"{loc}: no answer (unanswerable SQuAD v2 questions are not supported)", source)
        for k, (text, start) in enumerate(zip(ex.answers, ex.answer_starts)):
            if not text:
                raise InputError(f"{loc}: answer {k} has an empty text", source)
            if start < 0:
                raise InputError(f"{loc}: answer {k} {text!r} has a negative answer_start {start}", source)
            if start >= len(ex.context):
                raise InputError(f"{loc}: answer {k} {text!r} lies beyond the context: answer_start {start}, "
                                 f"the context has {len(ex.context)} characters", source)
            found = ex.context[start:start + len(text)]
            if found != text:
                raise InputError(f"{loc}: answer {k} {text!r} does not match the context at answer_start {start} "
                                 f"({found!r})", source)
    return labelled


def _field(record, key, kind, loc, source):
    if not isinstance(record, dict) or key not in record:
        raise InputError(f"{loc}: missing {key!r}", source)
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise InputError(f"{loc}: {key!r} should be a {names}, got {type(value).__name__}", source)
    return value


def read_squad_json(path: str, require_answers: bool = False) -> Tuple[List[QAExample], bool]:
    """Read a SQuAD v1.1-format file (`{"data": [{"title", "paragraphs": [{"context", "qas": [{"id",
    "question", "answers": [{"text", "answer_start"}]}]}]}]}`), as SQuAD, XQuAD, MLQA and TyDi QA GoldP
    ship it. Returns `(questions in file order, labelled)`. Anything malformed raises `InputError`
    naming the file and the record (question id and position)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            content = json.load(f)
    except UnicodeDecodeError as e:
        raise InputError(f"not valid UTF-8 ({e.reason} at byte {e.start})", path) from None
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror})", path) from None
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e.msg} (column {e.colno})", path, e.lineno) from None
    if not isinstance(content, dict) or not isinstance(content.get("data"), list):
        raise InputError("no 'data' list at the top level: not a SQuAD-format JSON file", path)
    examples, where = [], []
    for a, article in enumerate(content["data"]):
        aloc = f"data[{a}]"
        paragraphs = _field(article, "paragraphs", list, aloc, path)
        title = article.get("title", "") if isinstance(article.get("title", ""), str) else ""
        for p, paragraph in enumerate(paragraphs):
            ploc = f"{aloc}.paragraphs[{p}]"
            context = _field(paragraph, "context", str, ploc, path)
            for q, qa in enumerate(_field(paragraph, "qas", list, ploc, path)):
                qloc = f"{ploc}.qas[{q}]"
                qa_id = _field(qa, "id", (str, int), qloc, path)
                loc = _where(qa_id, qloc)
                question = _field(qa, "question", str, loc, path)
                texts, starts = [], []
                for k, answer in enumerate(_field(qa, "answers", list, loc, path)):
                    texts.append(_field(answer, "text", str, f"{loc}: answer {k}", path))
                    starts.append(_field(answer, "answer_start", int, f"{loc}: answer {k}", path))
                examples.append(QAExample(str(qa_id), question, context, texts, starts, title))
                where.append(qloc)
    return examples, check_examples(examples, path, where, require_answers)


def examples_from_hub(dataset, source: str, require_answers: bool = False) -> Tuple[List[QAExample], bool]:
    """Questions of one split of a Hub dataset in the `squad` layout (id, title, context, question,
    answers = {text: [...], answer_start: [...]}), validated as files are."""
    # The layout of rajpurkar/squad (config plain_text; train, validation) and of google/xtreme's QA configs:
    # https://huggingface.co/datasets/rajpurkar/squad, https://huggingface.co/datasets/google/xtreme
    missing = {"id", "context", "question", "answers"} - set(dataset.column_names)
    if missing:
        raise InputError(f"missing column(s) {sorted(missing)}; found {dataset.column_names}", source)
    titles = dataset["title"] if "title" in dataset.column_names else [""] * len(dataset)
    examples = [QAExample(str(i), q, c, list(a["text"]), [int(s) for s in a["answer_start"]], t or "")
                for i, q, c, a, t in zip(dataset["id"], dataset["question"], dataset["context"], dataset["answers"],
                                         titles)]
    return examples, check_examples(examples, source, require_answers=require_answers)


def _qa_set(name: str, examples: List[QAExample], labelled: bool, source: str, metric: str,
            lang: Optional[str]) -> QASet:
    if not labelled:
        logger.warning("%s: no gold answers in %s; predictions are written, no score is computed", name, source)
    return QASet(name, examples, source, metric, lang, labelled)


def load_qa_set(name: str, path: str, metric: str = "squad", lang: Optional[str] = None) -> QASet:
    return _qa_set(name, *read_squad_json(path), path, metric, lang)


# ---- the evaluation sets -------------------------------------------------------------------------

def build_cross_lingual(question_set: QASet, context_set: QASet, name: str) -> QASet:
    """A set that asks the questions of `question_set` about the paragraphs of `context_set`, paired by
    question id (parallel files such as XQuAD's); gold answers are those of the context side. Both
    sets must hold the same ids. Questions are in the context file's order."""
    questions = {ex.id: ex for ex in question_set.examples}
    examples = []
    for ex in context_set.examples:
        q = questions.pop(ex.id, None)
        if q is None:
            raise InputError(f"question {ex.id!r} of {context_set.source} is missing here; a cross-lingual set "
                             f"needs parallel files with the same ids", question_set.source)
        examples.append(replace(ex, question=q.question))
    if questions:
        extra = next(iter(questions))
        raise InputError(f"question {extra!r} (and {len(questions) - 1} more) not in {context_set.source}; a "
                         f"cross-lingual set needs parallel files with the same ids", question_set.source)
    return QASet(name, examples, f"{question_set.source} (questions) + {context_set.source} (contexts)",
                 context_set.metric, context_set.lang, context_set.labelled)


def _xquad_sets(load, languages: Sequence[str], cross_lingual: bool) -> List[QASet]:
    english = load("en") if cross_lingual and any(lang != "en" for lang in languages) else None
    sets = []
    for lang in languages:
        target = english if lang == "en" and english is not None else load(lang)
        sets.append(target)
        if cross_lingual and lang != "en":
            sets.append(build_cross_lingual(target, english, f"xquad_{lang}-q_en-c"))
            sets.append(build_cross_lingual(english, target, f"xquad_en-q_{lang}-c"))
    return sets


def xquad_sets(xquad_dir: str, languages: Sequence[str], cross_lingual: bool = True) -> List[QASet]:
    """`xquad_X` for every language from `xquad.X.json`, and with `cross_lingual` (X != en)
    `xquad_X-q_en-c` and `xquad_en-q_X-c` built with `xquad.en.json`."""
    def load(lang):
        path = os.path.join(xquad_dir, XQUAD_FILE.format(lang=lang))
        if not os.path.isfile(path):
            raise InputError(f"no XQuAD file for language {lang!r}", path)
        return load_qa_set(f"xquad_{lang}", path, "squad", lang)

    return _xquad_sets(load, languages, cross_lingual)


def _mlqa_wanted(languages: Sequence[str], cross_lingual: bool) -> List[Tuple[str, str]]:
    wanted = []
    for lang in languages:
        wanted.append((lang, lang))
        if cross_lingual and lang != "en":
            wanted += [("en", lang), (lang, "en")]
    return wanted


def _check_mlqa_context(context: str, where: str) -> None:
    if context not in MLQA_LANGUAGES:
        raise InputError(f"MLQA's evaluation has no normalisation for context language {context!r}", where)


def mlqa_sets(mlqa_dir: str, split: str, languages: Sequence[str], cross_lingual: bool = True) -> List[QASet]:
    """MLQA sets `mlqa_C-c_Q-q` from `{split}-context-C-question-Q.json` in `mlqa_dir/{split}/` or
    `mlqa_dir/` (the MLQA_V1 layout, or the files themselves): for every language X, X-X and, with
    `cross_lingual`, en-c_X-q and X-c_en-q. Scored with MLQA's normalisation for the context
    language. Combinations without a file are skipped with a warning (MLQA has no Russian)."""
    if not os.path.isdir(mlqa_dir):
        raise InputError("not a directory (--mlqa_dir)", mlqa_dir)
    sets, missing = [], []
    for context, question in _mlqa_wanted(languages, cross_lingual):
        filename = MLQA_FILE.format(split=split, context=context, question=question)
        path = next((p for p in (os.path.join(mlqa_dir, split, filename), os.path.join(mlqa_dir, filename))
                     if os.path.isfile(p)), None)
        if path is None:
            missing.append(filename)
            continue
        _check_mlqa_context(context, path)
        sets.append(load_qa_set(f"mlqa_{context}-c_{question}-q", path, "mlqa", context))
    if missing:
        logger.warning("MLQA %s: no file for %s in %s", split, ", ".join(missing), mlqa_dir)
    return sets


def tydiqa_sets(tydiqa_dir: str, languages: Sequence[str]) -> List[QASet]:
    """`tydiqa_X` from `tydiqa.goldp.X.dev.json` (XTREME's TyDi QA GoldP files; its dev set is the
    test set of zero-shot work) for every language that has one; scored as SQuAD v1.1."""
    if not os.path.isdir(tydiqa_dir):
        raise InputError("not a directory (--tydiqa_dir)", tydiqa_dir)
    sets = []
    for lang in languages:
        path = os.path.join(tydiqa_dir, TYDIQA_FILE.format(lang=lang))
        if os.path.isfile(path):
            sets.append(load_qa_set(f"tydiqa_{lang}", path, "squad", lang))
    if not sets:
        logger.warning("TyDi QA: no %s file for %s in %s", TYDIQA_FILE, ", ".join(languages), tydiqa_dir)
    return sets


# ---- the evaluation sets from the Hub --------------------------------------------------------------
# google/xtreme serves the QA sets in the `squad` layout (id, title, context, question, answers {text,
# answer_start}): XQuAD.{lang} (split validation), MLQA.{context}.{question} (validation = MLQA dev, test),
# tydiqa (TyDi QA GoldP; train, and validation: the dev questions of all nine languages in one split, each
# id starting with the language's English name, e.g. "russian-..."). Checked against the dataset card and its
# per-config commits: https://huggingface.co/datasets/google/xtreme (e.g. commit 90a6339 "Add tydiqa data files").
# MLQA.{l1}.{l2} holds MLQA_V1/dev/dev-context-{l1}-question-{l2}.json: the context language comes first (the
# loading script the parquet files were converted from, huggingface/datasets datasets/xtreme/xtreme.py).
XQUAD_CONFIG = "XQuAD.{lang}"
MLQA_CONFIG = "MLQA.{context}.{question}"
TYDIQA_CONFIG = "tydiqa"
TYDIQA_LANGUAGES = {"ar": "arabic", "bn": "bengali", "en": "english", "fi": "finnish", "id": "indonesian",
                    "ko": "korean", "ru": "russian", "sw": "swahili", "te": "telugu"}


def hub_qa_set(name: str, dataset_name: str, config: str, split: str, metric: str = "squad",
               lang: Optional[str] = None, **hub_kwargs) -> QASet:
    """One evaluation set from a Hub dataset in the `squad` layout (validated as files are)."""
    from hf_xladjust.hub_data import canonical_dataset_id, load_hub_split

    dataset_name = canonical_dataset_id(dataset_name)
    source = f"{dataset_name}[{config}]:{split}"
    return _qa_set(name, *examples_from_hub(load_hub_split(dataset_name, config, split, **hub_kwargs), source),
                   source, metric, lang)


def xquad_hub_sets(dataset_name: str, languages: Sequence[str], cross_lingual: bool = True,
                   **hub_kwargs) -> List[QASet]:
    """As `xquad_sets`, from the configs `XQuAD.{lang}` (split validation) of a Hub dataset (google/xtreme)."""
    return _xquad_sets(lambda lang: hub_qa_set(f"xquad_{lang}", dataset_name, XQUAD_CONFIG.format(lang=lang),
                                               "validation", "squad", lang, **hub_kwargs),
                       languages, cross_lingual)


def mlqa_hub_sets(dataset_name: str, split: str, languages: Sequence[str], cross_lingual: bool = True,
                  **hub_kwargs) -> List[QASet]:
    """As `mlqa_sets`, from the configs `MLQA.{context}.{question}` of a Hub dataset (google/xtreme); `split`
    dev or test (the Hub's validation and test). Combinations the dataset has no config for are skipped
    with a warning."""
    import datasets

    from hf_xladjust.hub_data import canonical_dataset_id

    dataset_name = canonical_dataset_id(dataset_name)
    configs = set(datasets.get_dataset_config_names(dataset_name, **hub_kwargs))
    sets, missing = [], []
    for context, question in _mlqa_wanted(languages, cross_lingual):
        config = MLQA_CONFIG.format(context=context, question=question)
        if config not in configs:
            missing.append(config)
            continue
        _check_mlqa_context(context, f"{dataset_name}[{config}]")
        sets.append(hub_qa_set(f"mlqa_{context}-c_{question}-q", dataset_name, config,
                               "validation" if split == "dev" else split, "mlqa", context, **hub_kwargs))
    if missing:
        logger.warning("MLQA %s: %s has no config %s", split, dataset_name, ", ".join(missing))
    return sets


def tydiqa_hub_sets(dataset_name: str, languages: Sequence[str], **hub_kwargs) -> List[QASet]:
    """`tydiqa_X` from the config `tydiqa` (split validation) of a Hub dataset (google/xtreme), whose one split
    holds every language: the questions whose id starts with the language's name (`russian-`) for every
    language that has some; scored as SQuAD v1.1."""
    wanted = [lang for lang in languages if lang in TYDIQA_LANGUAGES]
    if not wanted:
        logger.warning("TyDi QA GoldP has none of %s (it has %s)", ", ".join(languages), ", ".join(TYDIQA_LANGUAGES))
        return []
    everything = hub_qa_set("tydiqa", dataset_name, TYDIQA_CONFIG, "validation", **hub_kwargs)
    sets = []
    for lang in wanted:
        prefix = TYDIQA_LANGUAGES[lang] + "-"
        examples = [ex for ex in everything.examples if ex.id.startswith(prefix)]
        if not examples:
            logger.warning("TyDi QA: no question of %s (ids starting %r) in %s", lang, prefix, everything.source)
            continue
        sets.append(replace(everything, name=f"tydiqa_{lang}", examples=examples, lang=lang,
                            source=f"{everything.source} ({prefix}*)"))
    return sets


def named_sets(specs: Iterable[str], option: str) -> List[QASet]:
    """Sets given as `NAME=PATH`. A name `mlqa_C-c_Q-q` is scored with MLQA's normalisation for
    language C, any other with SQuAD v1.1's."""
    sets = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not path or not SET_NAME.match(name):
            raise ValueError(f"{option} takes NAME=PATH (NAME of letters, digits, '_', '-', '.'), got {spec!r}")
        if not os.path.isfile(path):
            raise InputError(f"no such file (set {name!r} of {option})", path)
        mlqa = MLQA_SET_NAME.match(name)
        sets.append(load_qa_set(name, path, "mlqa" if mlqa else "squad", mlqa.group(1) if mlqa else None))
    return sets


def check_unique_names(sets: Sequence[QASet]) -> None:
    seen = {}
    for s in sets:
        if s.name in seen:
            raise ValueError(f"two evaluation sets named {s.name!r} ({seen[s.name]} and {s.source})")
        seen[s.name] = s.source


def examples_to_columns(examples: Iterable[QAExample]) -> Dict[str, list]:
    """Columns in the Hub `squad` layout, for `datasets.Dataset.from_dict`."""
    columns = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    for ex in examples:
        columns["id"].append(ex.id)
        columns["title"].append(ex.title)
        columns["context"].append(ex.context)
        columns["question"].append(ex.question)
        columns["answers"].append({"text": list(ex.answers), "answer_start": list(ex.answer_starts)})
    return columns


# ---- features ------------------------------------------------------------------------------------

def _tokenize(tokenizer, questions, contexts, max_seq_length, doc_stride, pad_to_max_length, ids=None):
    pad_on_right = tokenizer.padding_side == "right"
    # Leading whitespace of a question would take room from the context (as upstream).
    questions = [q.lstrip() for q in questions]
    # A question that leaves no more than `doc_stride` tokens for the context cannot be windowed (the
    # tokenizer would abort the process): say which one, instead of truncating it silently.
    room = max_seq_length - tokenizer.num_special_tokens_to_add(pair=True) - doc_stride
    lengths = [len(q) for q in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    for i, n in enumerate(lengths):
        if n >= room:
            raise InputError(f"question {ids[i] if ids else i!r} has {n} tokens: a window of {max_seq_length} tokens "
                             f"with a stride of {doc_stride} leaves no room for its context (raise --max_seq_length "
                             f"or lower --doc_stride)")
    return tokenizer(
        questions if pad_on_right else contexts,
        contexts if pad_on_right else questions,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length" if pad_to_max_length else False,
    ), (1 if pad_on_right else 0)


def prepare_train_features(batch: Dict[str, list], tokenizer, max_seq_length: int = 384, doc_stride: int = 128,
                           pad_to_max_length: bool = False) -> Dict[str, list]:
    """Training windows with `start_positions`/`end_positions` of the first gold answer, or of the
    CLS token where the window's context does not contain the whole answer (upstream's labelling)."""
    tokenized, context_index = _tokenize(tokenizer, batch["question"], batch["context"], max_seq_length,
                                         doc_stride, pad_to_max_length, batch.get("id"))
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    offset_mapping = tokenized.pop("offset_mapping")
    tokenized["start_positions"], tokenized["end_positions"] = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = tokenized["input_ids"][i]
        if tokenizer.cls_token_id in input_ids:
            cls_index = input_ids.index(tokenizer.cls_token_id)
        elif tokenizer.bos_token_id in input_ids:
            cls_index = input_ids.index(tokenizer.bos_token_id)
        else:
            cls_index = 0
        sequence_ids = tokenized.sequence_ids(i)
        answers = batch["answers"][sample_mapping[i]]
        if len(answers["answer_start"]) == 0:
            tokenized["start_positions"].append(cls_index)
            tokenized["end_positions"].append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        token_start = 0
        while sequence_ids[token_start] != context_index:
            token_start += 1
        token_end = len(input_ids) - 1
        while sequence_ids[token_end] != context_index:
            token_end -= 1
        if not (offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char):
            tokenized["start_positions"].append(cls_index)
            tokenized["end_positions"].append(cls_index)
        else:
            while token_start < len(offsets) and offsets[token_start][0] <= start_char:
                token_start += 1
            tokenized["start_positions"].append(token_start - 1)
            while offsets[token_end][1] >= end_char:
                token_end -= 1
            tokenized["end_positions"].append(token_end + 1)
    return tokenized


def prepare_validation_features(batch: Dict[str, list], indices: Optional[List[int]] = None, tokenizer=None,
                                max_seq_length: int = 384, doc_stride: int = 128,
                                pad_to_max_length: bool = False) -> Dict[str, list]:
    """Evaluation windows with `example_index` (the question's position in its set: `indices`, as
    `Dataset.map(with_indices=True)` passes them) and `offset_mapping`, [-1, -1] outside the context."""
    indices = list(range(len(batch["question"]))) if indices is None else indices
    tokenized, context_index = _tokenize(tokenizer, batch["question"], batch["context"], max_seq_length,
                                         doc_stride, pad_to_max_length, batch.get("id"))
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    tokenized["example_index"] = [indices[s] for s in sample_mapping]
    for i in range(len(tokenized["input_ids"])):
        sequence_ids = tokenized.sequence_ids(i)
        tokenized["offset_mapping"][i] = [list(o) if sequence_ids[k] == context_index else [-1, -1]
                                          for k, o in enumerate(tokenized["offset_mapping"][i])]
    return tokenized


def _map(examples: Sequence[QAExample], source: str, function, map_kwargs: Optional[dict], **kwargs):
    import datasets

    dataset = datasets.Dataset.from_dict(examples_to_columns(examples))
    try:
        return dataset.map(function, batched=True, remove_columns=dataset.column_names, **kwargs,
                           **(map_kwargs or {}))
    except InputError as err:  # a question too long for the window: name its file
        raise InputError(err.reason, source) from None


def train_features(examples: Sequence[QAExample], source: str, tokenizer, max_seq_length: int = 384,
                   doc_stride: int = 128, pad_to_max_length: bool = False, map_kwargs: Optional[dict] = None):
    """The training windows (`prepare_train_features`) of `examples`, as a `datasets.Dataset`."""
    return _map(examples, source, prepare_train_features, map_kwargs,
                fn_kwargs={"tokenizer": tokenizer, "max_seq_length": max_seq_length, "doc_stride": doc_stride,
                           "pad_to_max_length": pad_to_max_length})


def validation_features(qa_set: QASet, tokenizer, max_seq_length: int = 384, doc_stride: int = 128,
                        pad_to_max_length: bool = False, map_kwargs: Optional[dict] = None) -> QAFeatures:
    """Tokenise a set into windows (a `datasets.Dataset` of model inputs) and the arrays post-processing
    needs; stored on `qa_set.features` too."""
    features = _map(qa_set.examples, qa_set.source, prepare_validation_features, map_kwargs, with_indices=True,
                    fn_kwargs={"tokenizer": tokenizer, "max_seq_length": max_seq_length, "doc_stride": doc_stride,
                               "pad_to_max_length": pad_to_max_length})
    example_index = np.asarray(features["example_index"], dtype=np.int64)
    offset_lists = features["offset_mapping"]
    width = max(len(o) for o in offset_lists)
    offsets = np.full((len(offset_lists), width, 2), -1, dtype=np.int64)
    for i, o in enumerate(offset_lists):
        offsets[i, :len(o)] = o
    qa_set.features = QAFeatures(features.remove_columns(["example_index", "offset_mapping"]), example_index,
                                 offsets)
    return qa_set.features


# ---- post-processing -----------------------------------------------------------------------------

def best_spans(start_logits: np.ndarray, end_logits: np.ndarray, offsets: np.ndarray, n_best_size: int = 20,
               max_answer_length: int = 30, chunk_size: int = 4096) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every window, the best (start + end logit) token span among its `n_best_size` highest start
    and end logits that lies in the context, ends at or after its start and spans at most
    `max_answer_length` tokens. Returns (score, start token, end token) per window; score -inf where no
    pair qualifies. Logits may be wider or narrower than `offsets` (the Trainer pads them with -100)."""
    width = min(start_logits.shape[1], end_logits.shape[1], offsets.shape[1])
    n = len(offsets)
    score = np.full(n, -np.inf)
    best_start, best_end = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    k = min(n_best_size, width)
    for lo in range(0, n, chunk_size):
        hi = min(lo + chunk_size, n)
        rows = np.arange(hi - lo)
        in_context = offsets[lo:hi, :width, 0] >= 0
        candidates = []
        for logits in (start_logits, end_logits):
            logits = np.asarray(logits[lo:hi, :width], dtype=np.float64)
            top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
            candidates.append((top, np.take_along_axis(logits, top, 1), np.take_along_axis(in_context, top, 1)))
        (s_idx, s_val, s_ok), (e_idx, e_val, e_ok) = candidates
        length = e_idx[:, None, :] - s_idx[:, :, None]
        ok = s_ok[:, :, None] & e_ok[:, None, :] & (length >= 0) & (length < max_answer_length)
        pair_score = np.where(ok, s_val[:, :, None] + e_val[:, None, :], -np.inf).reshape(hi - lo, k * k)
        best = pair_score.argmax(1)
        score[lo:hi] = pair_score[rows, best]
        best_start[lo:hi] = s_idx[rows, best // k]
        best_end[lo:hi] = e_idx[rows, best % k]
    return score, best_start, best_end


def postprocess_qa_predictions(contexts: Sequence[str], example_index: np.ndarray, offsets: np.ndarray,
                               predictions: Tuple[np.ndarray, np.ndarray], n_best_size: int = 20,
                               max_answer_length: int = 30) -> Tuple[List[str], np.ndarray]:
    """Answer texts (and their scores) for the questions whose contexts are `contexts`, from the
    (start, end) logits of their windows; `example_index` gives each window's question. A question
    none of whose windows has a valid span (its context truncated away) gets "" and score -inf."""
    start_logits, end_logits = predictions[0], predictions[1]
    if not (len(start_logits) == len(end_logits) == len(example_index) == len(offsets)):
        raise ValueError(f"{len(start_logits)} start and {len(end_logits)} end logit rows for "
                         f"{len(example_index)} windows")
    window_score, starts, ends = best_spans(start_logits, end_logits, offsets, n_best_size, max_answer_length)
    n = len(contexts)
    example_score = np.full(n, -np.inf)
    np.maximum.at(example_score, example_index, window_score)
    is_best = np.isfinite(window_score) & (window_score == example_score[example_index])
    winners = np.flatnonzero(is_best)
    questions, first = np.unique(example_index[winners], return_index=True)  # first best window per question
    chosen = np.full(n, -1, dtype=np.int64)
    chosen[questions] = winners[first]
    texts = []
    for i, w in enumerate(chosen.tolist()):
        texts.append("" if w < 0 else contexts[i][offsets[w, starts[w], 0]:offsets[w, ends[w], 1]])
    missing = int((chosen < 0).sum())
    if missing:
        logger.warning("%d of %d questions have no valid answer span in any window; predicted ''", missing, n)
    return texts, example_score


def score_set(qa_set: QASet, texts: Sequence[str]) -> Tuple[Dict[str, float], Dict[str, Tuple[float, bool]]]:
    """(`{"exact_match", "f1"}` in percent, per-question (f1, em)) of a labelled set; ({}, {}) otherwise."""
    if not qa_set.labelled:
        return {}, {}
    golds = {ex.id: ex.answers for ex in qa_set.examples}
    return qa_scores({ex.id: t for ex, t in zip(qa_set.examples, texts)}, golds, qa_set.metric, qa_set.lang)


def write_qa_predictions(path: str, qa_set: QASet, texts: Sequence[str], scores: Optional[Sequence[float]] = None,
                         per_question: Optional[Dict[str, Tuple[float, bool]]] = None) -> None:
    """One JSON line per question: `id`, `prediction`, `answers` (gold texts), `f1` (in [0, 1]) and `em`
    (bool), both null for an unlabelled set, and `score` (start + end logit of the answer) when given.
    The set's `f1`/`exact_match` in all_results.json is 100 x the mean of these."""
    if len(texts) != len(qa_set.examples):
        raise ValueError(f"{len(texts)} predictions for {len(qa_set.examples)} questions")
    per_question = per_question or {}
    records = []
    for i, (ex, text) in enumerate(zip(qa_set.examples, texts)):
        f1, em = per_question.get(ex.id, (None, None))
        record = {"id": ex.id, "prediction": text, "answers": list(ex.answers) if qa_set.labelled else [],
                  "f1": f1, "em": em}
        if scores is not None:
            record["score"] = float(scores[i]) if np.isfinite(scores[i]) else None
        records.append(record)
    write_jsonl(path, records)


def qa_input_files(args) -> List[InputPath]:
    """The files and folders a run_qa_xl.py run reads for the splits it trains or evaluates on (`args`: the
    parsed arguments as one namespace), checked before anything loads; Hub data has none."""
    inputs = [InputPath("--train_file", args.train_file)] if args.do_train and args.train_file else []
    languages = list(dict.fromkeys(args.eval_languages))
    for do_it, file_flag, sets_flag in ((args.do_eval, "validation_file", "eval_sets"),
                                        (args.do_predict, "test_file", "test_sets")):
        if not do_it:
            continue
        if getattr(args, file_flag):
            inputs.append(InputPath(f"--{file_flag}", getattr(args, file_flag)))
        for spec in getattr(args, sets_flag) or ():
            name, sep, path = spec.partition("=")
            if sep and path:  # a malformed spec is named_sets' error
                inputs.append(InputPath(f"--{sets_flag} {name}", path))
        if args.mlqa_dir:
            inputs.append(InputPath("--mlqa_dir", args.mlqa_dir, "folder"))
    if args.do_predict and args.xquad_dir:
        english = args.cross_lingual_eval and any(lang != "en" for lang in languages)
        for lang in dict.fromkeys((["en"] if english else []) + languages):
            path = os.path.join(args.xquad_dir, XQUAD_FILE.format(lang=lang))
            inputs.append(InputPath(f"--xquad_dir ({lang})", path))
    if args.do_predict and args.tydiqa_dir:
        inputs.append(InputPath("--tydiqa_dir", args.tydiqa_dir, "folder"))
    return inputs
