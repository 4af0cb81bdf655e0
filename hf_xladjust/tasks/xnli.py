"""XNLI data for zero-shot transfer: XTREME tsv files, Hub splits, mixed-language sets, accuracy and
per-example predictions.

The label ids are fixed to those of the Hub dataset facebook/xnli (entailment 0, neutral 1, contradiction 2)
whatever the source. A mixed-language set (Efimov et al., Sec. 4) replaces, per example, the premise
or the hypothesis (chosen by a seeded RNG, with a fixed seed by default, so that every run seed sees
the same set) with the English original of the same line; the choices are recorded in a JSON file that
later runs can reuse, and kept with each example so that they are written next to the predictions.
"""
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from hf_xladjust.errors import InputError
from hf_xladjust.files import read_text_lines, write_json, write_jsonl
from hf_xladjust.hub_data import canonical_dataset_id, load_hub_split
from hf_xladjust.tasks.labels import match_model_labels

LABELS = ("entailment", "neutral", "contradiction")
LABEL2ID = {label: i for i, label in enumerate(LABELS)}
ID2LABEL = dict(enumerate(LABELS))
# XNLI-MT / MultiNLI translations spell the third label "contradictory".
LABEL_ALIASES = {"contradictory": "contradiction"}
ENGLISH_SIDES = ("premise", "hypothesis")
_HEADER_LABELS = ("label", "gold_label")
# The one seed of the mixed-language sets: run_glue_xl.py's default and what the grid passes (a grid's
# step fingerprints include it, so it stays 0).
MIXED_LANGUAGE_SEED = 0

logger = logging.getLogger(__name__)


@dataclass
class NLIExample:
    """One premise/hypothesis pair. `id` is the 0-based position in its source (the same line in
    line-parallel files of different languages); `line` the 1-based line of a file, if any."""

    id: int
    premise: str
    hypothesis: str
    label: int
    line: Optional[int] = None


@dataclass
class MixedNLIExample(NLIExample):
    """An example of a mixed-language set: `english_side` says which half is the English original."""

    english_side: str = "premise"


def label_id(label: str) -> Optional[int]:
    """Our id of a label string (case-insensitive, "contradictory" accepted), None when unknown."""
    name = label.strip().lower()
    return LABEL2ID.get(LABEL_ALIASES.get(name, name))


def read_xnli_tsv(path: str) -> List[NLIExample]:
    """Read an XTREME-format XNLI file: `premise<TAB>hypothesis<TAB>label` per line, no quoting.

    A header line (third field `label` or `gold_label`) on line 1 is skipped, and logged. Anything else that
    is not a well-formed labelled pair raises `InputError` naming the file and line: a wrong number
    of fields (XTREME's unlabelled test files have two), an empty premise or hypothesis, an unknown
    label, undecodable UTF-8, or a file with no example at all."""
    examples, header = [], False
    for line_no, text in read_text_lines(path):
        fields = text.split("\t")
        if len(fields) != 3:
            what = "an empty line" if not text.strip() else f"{len(fields)} field(s)"
            raise InputError(f"expected 3 tab-separated fields (premise, hypothesis, label), got {what}",
                             path, line_no)
        premise, hypothesis, label = fields
        if line_no == 1 and label.strip().lower() in _HEADER_LABELS:
            logger.info("%s:1: skipped the header line %r", path, text)
            header = True
            continue
        for name, value in (("premise", premise), ("hypothesis", hypothesis), ("label", label)):
            if not value.strip():
                raise InputError(f"empty {name}", path, line_no)
        gold = label_id(label)
        if gold is None:
            raise InputError(f"unknown label {label.strip()!r}; expected one of {', '.join(LABELS)}",
                             path, line_no)
        examples.append(NLIExample(len(examples), premise, hypothesis, gold, line_no))
    if not examples:
        raise InputError("no examples (only a header line)" if header else "no examples (the file is empty)", path)
    return examples


def examples_from_hub(dataset, source: str) -> List[NLIExample]:
    """Examples of one split of a Hub NLI dataset with `premise`, `hypothesis` and a `label`
    ClassLabel; its label names must be ours (as in facebook/xnli), in any order. `source` names the
    split in error messages."""
    missing = {"premise", "hypothesis", "label"} - set(dataset.column_names)
    if missing:
        raise InputError(f"missing column(s) {sorted(missing)}; found {dataset.column_names}", source)
    names = getattr(dataset.features["label"], "names", None)
    if names is None:
        raise InputError("the 'label' column is not a ClassLabel with label names", source)
    to_ours = {}
    for i, name in enumerate(names):
        ours = label_id(name)
        if ours is None:
            raise InputError(f"unknown label {name!r}; expected one of {', '.join(LABELS)}", source)
        to_ours[i] = ours
    examples = []
    for i, (premise, hypothesis, label) in enumerate(zip(dataset["premise"], dataset["hypothesis"],
                                                         dataset["label"])):
        if label not in to_ours:
            raise InputError(f"example {i} has no gold label (label id {label})", source)
        examples.append(NLIExample(i, premise, hypothesis, to_ours[label]))
    if not examples:
        raise InputError("no examples", source)
    return examples


def build_mixed_language(target: Sequence[NLIExample], english: Sequence[NLIExample], seed: int,
                         target_source: Optional[str] = None,
                         english_source: Optional[str] = None) -> List[MixedNLIExample]:
    """The mixed-language set of `target`: for every example, the premise or the hypothesis (chosen
    with `numpy.random.default_rng(seed)`, one draw per example in order, so a prefix of the set
    does not depend on its length) is the English original from the same position of `english`;
    the other half stays in the target language.

    The two sets must be line-parallel: same length and the same gold label at every position."""
    if len(target) != len(english):
        raise InputError(f"{len(target)} examples, but the English set {english_source or ''} has "
                         f"{len(english)}; a mixed-language set needs line-parallel files", target_source)
    for t, e in zip(target, english):
        if t.label != e.label:
            raise InputError(f"gold label {LABELS[t.label]!r} differs from {LABELS[e.label]!r} at the same "
                             f"position of the English set {english_source or ''}; the files are not "
                             f"line-parallel", target_source, t.line or t.id + 1)
    english_premise = np.random.default_rng(seed).random(len(target)) < 0.5
    mixed = []
    for t, e, en_premise in zip(target, english, english_premise):
        if en_premise:
            mixed.append(MixedNLIExample(t.id, e.premise, t.hypothesis, t.label, t.line, "premise"))
        else:
            mixed.append(MixedNLIExample(t.id, t.premise, e.hypothesis, t.label, t.line, "hypothesis"))
    return mixed


def mixed_language_set(target: Sequence[NLIExample], english: Sequence[NLIExample], seed: int, path: str,
                       target_source: Optional[str] = None, english_source: Optional[str] = None,
                       write: bool = True) -> List[MixedNLIExample]:
    """The mixed-language set of `target`, with its premise/hypothesis choices recorded in `path` (JSON):
    when `path` exists its choices are used (the first len(target) of them, so a set built on a whole
    file serves its prefixes), else they are drawn with `seed` (`build_mixed_language`) and, with
    `write`, saved there. Every run pointed at the same file evaluates the same set: a file that records
    another seed, or other target/English sets (compared by file name, so moved data still matches),
    is refused rather than silently used in place of what this run asked for."""
    mixed = build_mixed_language(target, english, seed, target_source, english_source)  # also checks the files
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                recorded = json.load(f)
            sides = recorded["english_side"]
        except (ValueError, KeyError, TypeError) as e:
            raise InputError(f"not a mixed-language choice file ({e})", path) from None
        if recorded.get("seed") is not None and recorded["seed"] != seed:
            raise InputError(f"choices drawn with seed {recorded['seed']}, but this run's mixed-language seed is "
                             f"{seed}; delete the file or use another folder for the mixed-language sets", path)
        for what, mine in (("target_source", target_source), ("english_source", english_source)):
            theirs = recorded.get(what)
            if theirs and mine and os.path.basename(str(theirs)) != os.path.basename(str(mine)):
                raise InputError(f"choices recorded for {what} {theirs}, but this run's is {mine}; delete the "
                                 "file or use another folder for the mixed-language sets", path)
        if len(sides) < len(mixed):
            raise InputError(f"{len(sides)} recorded choices, but the set has {len(mixed)} examples "
                             f"({target_source or 'target set'})", path)
        bad = sorted(set(sides) - set(ENGLISH_SIDES))
        if bad:
            raise InputError(f"unknown english_side value(s) {bad}; expected {' or '.join(ENGLISH_SIDES)}", path)
        return [MixedNLIExample(t.id, e.premise if side == "premise" else t.premise,
                                t.hypothesis if side == "premise" else e.hypothesis, t.label, t.line, side)
                for t, e, side in zip(target, english, sides)]
    if write:
        write_json(path, {"seed": seed, "examples": len(mixed), "target_source": target_source,
                          "english_source": english_source, "english_side": [m.english_side for m in mixed]})
    return mixed


def examples_to_columns(examples: Iterable[NLIExample]) -> Dict[str, list]:
    """Columns for `datasets.Dataset.from_dict`: id, premise, hypothesis, label."""
    columns = {"id": [], "premise": [], "hypothesis": [], "label": []}
    for ex in examples:
        columns["id"].append(ex.id)
        columns["premise"].append(ex.premise)
        columns["hypothesis"].append(ex.hypothesis)
        columns["label"].append(ex.label)
    return columns


def model_label_ids(config, source: Optional[str] = None) -> List[int]:
    """Match our labels to a model config; returns, for each of our label ids, the model's id.

    A config without label names (a bare encoder, or a head with `LABEL_i` names) gets ours:
    `id2label`/`label2id` are set so that they are saved with the fine-tuned model. A config with
    names keeps its own order (an existing MNLI/XNLI classifier); a label it lacks, or a head of
    another size, raises `InputError` naming the model."""
    def canonical(name: str) -> Optional[str]:
        ours = label_id(name)
        return None if ours is None else LABELS[ours]

    model_ids = match_model_labels(config, LABELS, "SequenceClassification", source, task="XNLI",
                                   canonical=canonical)
    return [model_ids[name] for name in LABELS]


def accuracy(preds: Sequence[int], golds: Sequence[int]) -> float:
    preds, golds = np.asarray(preds), np.asarray(golds)
    if preds.shape != golds.shape or preds.size == 0:
        raise ValueError(f"accuracy needs as many predictions as gold labels (>0), got {preds.size} and {golds.size}")
    return float((preds == golds).mean())


def write_predictions(path: str, examples: Sequence[NLIExample], preds: Sequence[int],
                      scores: Optional[Sequence[float]] = None) -> float:
    """Write one JSON line per example: `id`, `gold`, `pred` (label names), `correct`, `score` (the
    probability of the prediction, when given) and, for mixed-language examples, `english_side`.
    `preds` are our label ids. Returns the accuracy."""
    if len(preds) != len(examples):
        raise ValueError(f"{len(preds)} predictions for {len(examples)} examples")
    records = []
    for i, (ex, pred) in enumerate(zip(examples, preds)):
        record = {"id": ex.id, "gold": LABELS[ex.label], "pred": LABELS[int(pred)], "correct": int(pred) == ex.label}
        if scores is not None:
            record["score"] = float(scores[i])
        if isinstance(ex, MixedNLIExample):
            record["english_side"] = ex.english_side
        records.append(record)
    write_jsonl(path, records)
    return accuracy(preds, [ex.label for ex in examples])


def load_nli_examples(file: Optional[str] = None, dataset_name: Optional[str] = None,
                      language: Optional[str] = None, split: Optional[str] = None, max_samples: Optional[int] = None,
                      **hub_kwargs):
    """Examples of one language and split, from an XTREME tsv `file` or else from the Hub dataset
    `dataset_name` (config `language`, split `split`; `hub_kwargs` go to `datasets.load_dataset`).
    Keeps the first `max_samples`. Returns `(examples, source)`, `source` naming it for messages."""
    if file:
        examples, source = read_xnli_tsv(file), file
    elif dataset_name:
        # facebook/xnli: one config per language; premise, hypothesis, label ClassLabel
        # (entailment, neutral, contradiction): https://huggingface.co/datasets/facebook/xnli (README.md dataset_info)
        dataset_name = canonical_dataset_id(dataset_name)
        source = f"{dataset_name}[{language}]:{split}"
        examples = examples_from_hub(load_hub_split(dataset_name, language, split, **hub_kwargs), source)
    else:
        raise ValueError(f"no data for language {language!r}, split {split!r}: give a file or a dataset name")
    if max_samples is not None:
        examples = examples[:max_samples]
    return examples, source
