"""The paper's result tables from a results folder: means over seeds with significance marks.

    python -m hf_xladjust.report RESULTS_DIR [--tasks nli ner qa xsr] [--languages es ru vi hi] \\
        [--seeds 0 1 2] [--split test] [--ner_metric token|entity] [--output_dir DIR] [--report_to wandb]

Reads the per-example prediction files that the run_*.py scripts write, in the folders of the
experiment grid: `RESULTS/{task}/{regime}/{lang}/seed{n}/predictions_{split}_{set}.jsonl` (retrieval:
`predictions_{set}.jsonl`), task in nli/ner/qa/xsr, regime in original, adjusted, adjusted_n{size} (the
adjustment with that many sentences), adjusted_lora / adjusted_sentence / adjusted_frozen (the issue-19
realignments: LoRA, sentence-level InfoNCE, lower half frozen), adjusted_multi (one adjustment over all
languages), adjusted_cont, original_cont, rotation and normalized (the Original fine-tuned model evaluated
through a fitted transform).
A folder `{task}_{what}` is a variant of that task with a table of its own (e.g. `xsr_nli`: retrieval with
the NLI-fine-tuned models, next to `xsr` with the encoders).
A language folder contributes the sets whose name (split on `_` and `-`) contains its language code,
plus English-only sets (reported as `en (lang)`: the English score of that folder's model), so an
`original` folder shared by all languages (one model evaluated on every language) is read correctly
(the grid's own copy of it, `{task}/original/all/`, is read through the language folders' links; so is
`{task}/adjusted_multi/all/`).

One table per task, in the shape of the paper's Tables 2-5: rows Original / Adjusted / Adjusted (N sent.)
(smallest N first) / Adjusted (LoRA) / Adjusted (sentence) / Adjusted (frozen) / Adjusted (multi) / Adj + cont /
Orig + cont / Rotation / Normalized, those present, one
column per evaluation set, each cell the mean over seeds of the set's metric (x100) with `*`
(significantly different from Original) and `**` (from Adjusted), p < 0.05:

* nli: accuracy; paired t-test on per-example correctness averaged over seeds;
* qa: F1 / EM (each marked); paired t-tests on per-question F1 and EM averaged over seeds;
* xsr: MRR at the best layer, shown as `(Lk)`: one layer per model state (regime, language, set), the
  one with the highest MRR averaged over seeds; paired t-test on per-query reciprocal ranks at that
  layer averaged over seeds; acc@1 at that layer in the JSON;
* ner: F1, `--ner_metric token` (default) the token-level micro F1 of the paper's text (every tag
  but `O` a class), `entity` seqeval's entity-level F1 (default mode, exact spans; what the paper's
  released code printed); paired permutation test over the concatenated sentences of all seeds (seed s
  of one regime paired with seed s of the other), re-scoring that F1 from per-sentence (tp, fp, fn) on
  each permutation. The table's note and report.json name the measure.

Unlabelled sets (QA files with null scores, NER files with null gold tags) are left out with a warning.

Writes `report.md` (all tables, each followed by the p-values behind its marks), `{task}.md` and
`{task}.csv` (the table alone), and `report.json` with every mean,
standard deviation over seeds (ddof=1), per-seed value and p-value; for retrieval tables also
`{task}_layers.png`, the MRR of every model state at every layer.
"""
import csv
import io
import json
import logging
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hf_xladjust.errors import InputError
from hf_xladjust.evaluation.tagging import LEVELS as NER_METRICS
from hf_xladjust.evaluation.tagging import sentence_counts
from hf_xladjust.experiments.config import regime_size
from hf_xladjust.files import atomic_write, write_json
from hf_xladjust.statistics import (
    ALPHA,
    N_RESAMPLES,
    best_layer,
    f1_from_counts,
    paired_ttest,
    permutation_test_f1,
    reciprocal_rank_by_layer,
    sample_std,
    significance_marks,
)

logger = logging.getLogger(__name__)

TASKS = ("nli", "ner", "qa", "xsr")


def task_kind(name: str) -> Optional[str]:
    """The task a results folder holds: `nli`, ..., or a variant `{task}_{what}` such as `xsr_nli` (retrieval
    with the NLI-fine-tuned models, next to `xsr` with the encoders); None for any other name."""
    kind = name.split("_", 1)[0]
    return kind if kind in TASKS and (name == kind or name[len(kind) + 1:]) else None


# Row order; adjusted_n{size} rows (ascending size) go after Adjusted.
REGIMES = ("original", "adjusted", "adjusted_lora", "adjusted_sentence", "adjusted_frozen", "adjusted_multi",
           "adjusted_cont", "original_cont", "rotation", "normalized")
ROW_LABELS = {"original": "Original", "adjusted": "Adjusted", "adjusted_multi": "Adjusted (multi)",
              "adjusted_lora": "Adjusted (LoRA)", "adjusted_sentence": "Adjusted (sentence)",
              "adjusted_frozen": "Adjusted (frozen)",
              "adjusted_cont": "Adj + cont", "original_cont": "Orig + cont", "rotation": "Rotation",
              "normalized": "Normalized"}


def _sort_key(regime: str) -> Tuple[int, int]:
    size = regime_size(regime)
    if size is not None:
        return REGIMES.index("adjusted"), size
    return REGIMES.index(regime), 0


def is_regime(name: str) -> bool:
    return name in REGIMES or regime_size(name) is not None


def ordered_regimes(names) -> List[str]:
    """The regimes among `names`, in row order."""
    return sorted({n for n in names if is_regime(n)}, key=_sort_key)


def row_label(regime: str) -> str:
    """`Adjusted (5000 sent.)` for adjusted_n5000, else the regime's row label."""
    size = regime_size(regime)
    return f"Adjusted ({size} sent.)" if size is not None else ROW_LABELS.get(regime, regime)

# Which regimes each row is tested against: `*` vs Original, `**` vs Adjusted.
BASELINES = ("original", "adjusted")
TITLES = {"nli": "NLI: accuracy", "ner": "NER: {ner_metric}-level F1", "qa": "QA: F1 / EM",
          "xsr": "XSR: MRR at the best layer (Lk)"}
# What `--ner_metric` scores; named in the NER table's note and in report.json.
NER_MEASURES = {
    "token": "token-level micro F1 (every tag but O a class, B-X and I-X apart; the paper's text)",
    "entity": "entity-level micro F1 (seqeval default mode, exact spans of the right type; the paper's code)"}
# Metrics shown in a cell, in order; the JSON has these and the extra ones.
SHOWN = {"nli": ("accuracy",), "ner": ("f1",), "qa": ("f1", "em"), "xsr": ("mrr",)}
TESTS = {"nli": "paired t-test on per-example correctness averaged over seeds",
         "qa": "paired t-tests on per-question F1 and EM averaged over seeds",
         "xsr": "paired t-test on per-query reciprocal rank (at each state's best layer) averaged over seeds",
         "ner": "paired permutation test over the sentences of all seeds, re-scoring {ner_metric}-level F1"}
DEFAULT_LANGUAGES = ("es", "ru", "vi", "hi")
# Language codes (XTREME's 40) used to tell an English-only set from one about another language.
LANGUAGE_CODES = frozenset(
    "af ar bg bn de el en es et eu fa fi fr he hi hu id it ja jv ka kk ko ml mr ms my nl pt ru sw ta te th tl "
    "tr ur vi yo zh".split())
SPLITS = ("train", "eval", "validation", "dev", "test", "predict")
# The grid runs the original model once for all languages in `{task}/original/all/seed{n}` and links
# `{lang}/seed{n}` to it: it is read through those links, not as a language of its own.
SHARED_FOLDER = "all"
_SEED_DIR = re.compile(r"^seed(\d+)$")
_PRED_FILE = re.compile(r"^predictions_(.+)\.jsonl$")


# ----------------------------------------------------------------------------- reading
class UnscoredSet(Exception):
    """A prediction file of an unlabelled set (no per-example scores): its column is left out."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


@dataclass
class Predictions:
    """One prediction file: example ids (in file order) and the arrays the statistics need."""

    path: str
    ids: np.ndarray
    values: Dict[str, np.ndarray]


def _field(record: dict, name: str, path: str, line: int):
    if name not in record:
        raise InputError(f"record without {name!r}", path, line)
    return record[name]


def read_predictions(path: str, task: str, ner_metric: str = "token") -> Predictions:
    """Read a `predictions_*.jsonl` file of `task`: nli `correct`; qa `f1`, `em` (in [0, 1]; a file
    whose questions all have null scores, or NER sentences null gold tags, is an unlabelled set:
    `UnscoredSet`); xsr `ranks` (1-based, one per layer); ner `gold`, `pred`, turned into per-sentence
    (tp, fp, fn) of `ner_metric`-level micro F1 (`hf_xladjust.evaluation.tagging.sentence_counts`, all
    sentences of the file at once)."""
    if ner_metric not in NER_METRICS:
        raise ValueError(f"ner_metric must be one of {NER_METRICS}, got {ner_metric!r}")
    ids, rows, seen = [], [], set()
    golds, preds = [], []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror})", path) from None
    with f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"not a JSON object ({e.msg})", path, line_no) from None
            if not isinstance(record, dict):
                raise InputError("not a JSON object", path, line_no)
            ex_id = str(_field(record, "id", path, line_no))
            if ex_id in seen:
                raise InputError(f"duplicate id {ex_id!r}", path, line_no)
            seen.add(ex_id)
            ids.append(ex_id)
            if task == "nli":
                value = _field(record, "correct", path, line_no)
                if value not in (True, False, 0, 1):
                    raise InputError(f"'correct' must be true or false, got {value!r}", path, line_no)
                rows.append(float(value))
            elif task == "qa":
                pair = (_field(record, "f1", path, line_no), _field(record, "em", path, line_no))
                if pair == (None, None):  # an unlabelled set: predictions without scores
                    rows.append((np.nan, np.nan))
                    continue
                if not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in pair):
                    raise InputError(f"'f1' and 'em' must be numbers in [0, 1] (em may be a bool), got {pair}",
                                     path, line_no)
                rows.append(pair)
            elif task == "xsr":
                ranks = _field(record, "ranks", path, line_no)
                if (not isinstance(ranks, list) or not ranks
                        or not all(isinstance(r, (int, float)) and not isinstance(r, bool) and r >= 1
                                   and float(r).is_integer() for r in ranks)):
                    raise InputError("'ranks' must be a non-empty list of 1-based integer ranks", path, line_no)
                if rows and len(ranks) != len(rows[0]):
                    raise InputError(f"{len(ranks)} layers, but the first record has {len(rows[0])}", path, line_no)
                rows.append(ranks)
            elif task == "ner":
                gold, pred = _field(record, "gold", path, line_no), _field(record, "pred", path, line_no)
                if gold is None:  # an unlabelled set: predictions without gold tags
                    rows.append(False)
                    continue
                if (not isinstance(gold, list) or not isinstance(pred, list) or len(gold) != len(pred)
                        or not all(isinstance(t, str) for t in gold) or not all(isinstance(t, str) for t in pred)):
                    raise InputError("'gold' and 'pred' must be lists of string tags of one length", path, line_no)
                rows.append(True)
                golds.append(gold)
                preds.append(pred)
            else:
                raise ValueError(f"unknown task {task!r}")
    if not ids:
        raise InputError("no predictions in the file", path)
    values: Dict[str, np.ndarray]
    if task == "nli":
        values = {"correct": np.asarray(rows, dtype=np.float64)}
    elif task == "qa":
        arr = np.asarray(rows, dtype=np.float64)
        unscored = np.isnan(arr[:, 0])
        if unscored.all():
            raise UnscoredSet(path)
        if unscored.any():
            raise InputError(f"{int(unscored.sum())} of {len(arr)} questions have no f1/em (null), the others "
                             f"have: a set is either labelled or not", path)
        values = {"f1": arr[:, 0], "em": arr[:, 1]}
    elif task == "xsr":
        values = {"ranks": np.asarray(rows, dtype=np.int64)}
    else:
        unscored = ~np.asarray(rows, dtype=bool)
        if unscored.all():
            raise UnscoredSet(path)
        if unscored.any():
            raise InputError(f"{int(unscored.sum())} of {len(rows)} sentences have no gold tags (null), the "
                             f"others have: a set is either labelled or not", path)
        values = {"counts": sentence_counts(golds, preds, ner_metric)}
    return Predictions(path, np.asarray(ids), values)


def align_to(reference: Predictions, other: Predictions) -> np.ndarray:
    """Row order that puts `other`'s examples in `reference`'s order. Refuses files whose example ids
    differ (different subsets would pair unrelated examples)."""
    ref_order, other_order = np.argsort(reference.ids, kind="stable"), np.argsort(other.ids, kind="stable")
    if len(reference.ids) != len(other.ids) or not np.array_equal(reference.ids[ref_order], other.ids[other_order]):
        only_here = np.setdiff1d(other.ids, reference.ids)
        only_there = np.setdiff1d(reference.ids, other.ids)
        example = (only_here[:1].tolist() or only_there[:1].tolist() or ["?"])[0]
        raise InputError(f"its example ids differ from those of {reference.path} ({len(other.ids)} vs "
                         f"{len(reference.ids)} examples, {len(only_here)} ids only here, {len(only_there)} only "
                         f"there, e.g. {example!r}): the two cannot be paired", other.path)
    index = np.empty(len(other.ids), dtype=np.intp)
    index[ref_order] = other_order
    return index


# ----------------------------------------------------------------------------- the results folder
@dataclass(frozen=True)
class Column:
    """One table column: an evaluation set as seen from one language folder."""

    lang: str
    set_name: str
    english: bool

    @property
    def label(self) -> str:
        return f"{self.set_name} ({self.lang})" if self.english else self.set_name


def set_tokens(set_name: str) -> List[str]:
    return [t for t in re.split(r"[_-]", set_name) if t]


def column_for(set_name: str, lang: str, languages: Sequence[str]) -> Optional[Column]:
    """The column a set of language folder `lang` belongs to, or None when the set is about another
    language (a shared `original` folder holds every language's files)."""
    tokens = set(set_tokens(set_name))
    if lang in tokens and lang != "en":
        return Column(lang, set_name, False)
    codes = (LANGUAGE_CODES | set(languages)) - {"en"}
    if "en" in tokens and not tokens & codes:
        return Column(lang, set_name, True)
    return None


def prediction_files(folder: str, task: str, split: str) -> Dict[str, str]:
    """{set name: path} of the prediction files of `split` in one seed folder (retrieval files may
    carry no split: `predictions_es.jsonl`)."""
    found = {}
    for name in sorted(os.listdir(folder)):
        m = _PRED_FILE.match(name)
        if not m:
            continue
        stem = m.group(1)
        if stem.startswith(split + "_"):
            found[stem[len(split) + 1:]] = os.path.join(folder, name)
        elif task == "xsr" and stem.split("_", 1)[0] not in SPLITS:
            found.setdefault(stem, os.path.join(folder, name))
    return found


def _language_order(found: Sequence[str], languages: Optional[Sequence[str]]) -> List[str]:
    if languages:
        return [lang for lang in languages if lang in found]
    known = [lang for lang in DEFAULT_LANGUAGES if lang in found]
    return known + sorted(set(found) - set(known))


def discover(results_dir: str, task: str, split: str = "test", languages: Optional[Sequence[str]] = None,
             seeds: Optional[Sequence[int]] = None) -> Dict[Column, Dict[str, Dict[int, str]]]:
    """{column: {regime: {seed: prediction file}}} for one task folder (`xsr`, `xsr_nli`...), columns in
    table order."""
    task_dir = os.path.join(results_dir, task)
    kind = task_kind(task)
    regimes = ordered_regimes(r for r in os.listdir(task_dir) if os.path.isdir(os.path.join(task_dir, r)))
    for extra in sorted(set(os.listdir(task_dir)) - set(regimes)):
        logger.warning("%s: not a regime (%s, adjusted_n{size}), skipped", os.path.join(task_dir, extra),
                       ", ".join(REGIMES))
    folders = sorted({lang for r in regimes for lang in os.listdir(os.path.join(task_dir, r))
                      if os.path.isdir(os.path.join(task_dir, r, lang)) and lang != SHARED_FOLDER})
    langs = _language_order(folders, languages)
    table: Dict[Column, Dict[str, Dict[int, str]]] = {}
    for regime in regimes:
        for lang in langs:
            lang_dir = os.path.join(task_dir, regime, lang)
            if not os.path.isdir(lang_dir):
                continue
            for seed_dir in sorted(os.listdir(lang_dir)):
                m = _SEED_DIR.match(seed_dir)
                if not m or not os.path.isdir(os.path.join(lang_dir, seed_dir)):
                    continue
                seed = int(m.group(1))
                if seeds is not None and seed not in seeds:
                    continue
                for set_name, path in prediction_files(os.path.join(lang_dir, seed_dir), kind, split).items():
                    column = column_for(set_name, lang, folders)
                    if column is not None:
                        table.setdefault(column, {}).setdefault(regime, {})[seed] = path

    def order(col: Column):
        dataset = "_".join(t for t in set_tokens(col.set_name) if t not in LANGUAGE_CODES and t != col.lang)
        return dataset, not col.english, langs.index(col.lang), col.set_name

    return {col: table[col] for col in sorted(table, key=order)}


# ----------------------------------------------------------------------------- statistics per column
def _per_seed_metrics(task: str, preds: Predictions, layer: Optional[int] = None) -> Dict[str, float]:
    v = preds.values
    if task == "nli":
        return {"accuracy": float(v["correct"].mean())}
    if task == "qa":
        return {"f1": float(v["f1"].mean()), "em": float(v["em"].mean())}
    if task == "xsr":
        ranks = v["ranks"][:, layer]
        return {"mrr": float((1.0 / ranks).mean()), "acc1": float((ranks == 1).mean())}
    tp, fp, fn = v["counts"].sum(axis=0)
    return {"f1": float(f1_from_counts(tp, fp, fn))}


def _example_values(task: str, preds: Predictions, layer: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Per-example values that the t-tests average over seeds."""
    v = preds.values
    if task == "nli":
        return {"accuracy": v["correct"]}
    if task == "qa":
        return {"f1": v["f1"], "em": v["em"]}
    if task == "xsr":
        ranks = v["ranks"][:, layer]
        return {"mrr": 1.0 / ranks, "acc1": (ranks == 1).astype(np.float64)}
    return {}


def column_statistics(task: str, files: Dict[str, Dict[int, str]], alpha: float = ALPHA,
                      n_resamples: int = N_RESAMPLES, permutation_seed: int = 0,
                      ner_metric: str = "token") -> Dict[str, dict]:
    """Every regime's means, standard deviations, per-seed values and p-values (vs Original and
    vs Adjusted) for one column. Examples are paired by id across every file of the column. NER F1 is
    `ner_metric`-level (token or entity)."""
    loaded: Dict[str, Dict[int, Predictions]] = {}
    reference = None
    for regime, by_seed in files.items():
        loaded[regime] = {}
        for seed in sorted(by_seed):
            preds = read_predictions(by_seed[seed], task, ner_metric)
            if reference is None:
                reference = preds
            else:
                index = align_to(reference, preds)
                preds = Predictions(preds.path, preds.ids[index], {k: a[index] for k, a in preds.values.items()})
            loaded[regime][seed] = preds

    cells: Dict[str, dict] = {}
    examples: Dict[str, Dict[str, np.ndarray]] = {}  # regime -> metric -> (examples,) averaged over seeds
    for regime, by_seed in loaded.items():
        cell: dict = {"seeds": sorted(by_seed), "n_examples": int(len(reference.ids)),
                      "files": [by_seed[s].path for s in sorted(by_seed)]}
        layer = None
        if task == "xsr":
            layers = {p.values["ranks"].shape[1] for p in by_seed.values()}
            if len(layers) != 1:
                raise InputError(f"seeds of one model state have different layer counts {sorted(layers)}",
                                 os.path.dirname(os.path.dirname(cell["files"][0])))
            mrr = np.stack([reciprocal_rank_by_layer(p.values["ranks"]).mean(axis=0) for p in by_seed.values()])
            layer = best_layer(mrr)
            cell["best_layer"] = layer
            cell["mrr_by_layer"] = mrr.mean(axis=0).tolist()
        per_seed = [_per_seed_metrics(task, by_seed[s], layer) for s in sorted(by_seed)]
        cell["metrics"] = {}
        for name in per_seed[0]:
            values = [m[name] for m in per_seed]
            cell["metrics"][name] = {"mean": float(np.mean(values)), "std": sample_std(values),
                                     "per_seed": {str(s): v for s, v in zip(sorted(by_seed), values)}}
        per_example = [_example_values(task, by_seed[s], layer) for s in sorted(by_seed)]
        examples[regime] = {k: np.mean([e[k] for e in per_example], axis=0) for k in per_example[0]}
        cells[regime] = cell

    for regime, cell in cells.items():
        for base in BASELINES:
            if base == regime or base not in cells or (base == "adjusted" and regime == "original"):
                continue
            if task == "ner":
                if cells[base]["seeds"] != cell["seeds"]:
                    raise InputError(f"the permutation test pairs seed with seed, but {regime} has seeds "
                                     f"{cell['seeds']} and {base} has {cells[base]['seeds']} (use --seeds)",
                                     os.path.dirname(os.path.dirname(cell["files"][0])))
                a = np.concatenate([loaded[regime][s].values["counts"] for s in cell["seeds"]])
                b = np.concatenate([loaded[base][s].values["counts"] for s in cell["seeds"]])
                diff, p = permutation_test_f1(a, b, n_resamples=n_resamples, seed=permutation_seed)
                cell["metrics"]["f1"][f"p_vs_{base}"] = p
                cell["metrics"]["f1"][f"pooled_f1_difference_vs_{base}"] = diff
            else:
                for name, values in examples[regime].items():
                    cell["metrics"][name][f"p_vs_{base}"] = paired_ttest(values, examples[base][name])
        for metric in cell["metrics"].values():
            metric["marks"] = significance_marks(metric.get("p_vs_original"), metric.get("p_vs_adjusted"), alpha)
    return cells


# ----------------------------------------------------------------------------- tables
def cell_text(task: str, cell: Optional[dict], digits: int = 1) -> str:
    """`71.2*` (the mean x100 and its marks); QA `F1 / EM`; retrieval with its layer `65.3** (L8)`."""
    if cell is None:
        return "-"
    parts = [f"{100 * cell['metrics'][m]['mean']:.{digits}f}{cell['metrics'][m]['marks']}" for m in SHOWN[task]]
    text = " / ".join(parts)
    if task == "xsr":
        text += f" (L{cell['best_layer']})"
    return text


def task_table(task: str, columns: Dict[Column, Dict[str, dict]],
               digits: int = 1) -> Tuple[List[str], List[List[str]]]:
    """Header and rows (`[row label, cell, ...]`) of one task's table."""
    regimes = ordered_regimes(r for cells in columns.values() for r in cells)
    header = ["model"] + [col.label for col in columns]
    rows = [[row_label(r)] + [cell_text(task, cells.get(r), digits) for cells in columns.values()] for r in regimes]
    return header, rows


def _p_text(p: Optional[float]) -> str:
    return "-" if p is None else f"{p:.3g}"


def p_value_table(task: str, columns: Dict[Column, Dict[str, dict]]) -> Tuple[List[str], List[List[str]]]:
    """The p-values behind the marks: `p vs Original / p vs Adjusted` per cell (QA: F1 then EM), for
    every row but Original."""
    regimes = [r for r in ordered_regimes(r for cells in columns.values() for r in cells) if r != "original"]
    header = ["p (vs Original / vs Adjusted)"] + [col.label for col in columns]
    rows = []
    for regime in regimes:
        row = [row_label(regime)]
        for cells in columns.values():
            cell = cells.get(regime)
            if cell is None:
                row.append("-")
                continue
            parts = []
            for m in SHOWN[task]:
                metric = cell["metrics"][m]
                text = _p_text(metric.get("p_vs_original"))
                if regime != "adjusted":
                    text += " / " + _p_text(metric.get("p_vs_adjusted"))
                parts.append(text)
            row.append("; ".join(parts))
        rows.append(row)
    return header, rows


def to_markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _seed_note(columns: Dict[Column, Dict[str, dict]]) -> str:
    counts = sorted({len(cell["seeds"]) for cells in columns.values() for cell in cells.values()})
    return "/".join(str(c) for c in counts)


# ----------------------------------------------------------------------------- CLI
@dataclass
class ReportArguments:
    """Which results to read and how to test them (RESULTS_DIR is the positional argument)."""

    output_dir: Optional[str] = field(default=None,
                                      metadata={"help": "Where the tables go (default RESULTS_DIR/report)."})
    tasks: Optional[List[str]] = field(default=None, metadata={"help": "Tasks to report (default: every task folder "
                                                                       "present among nli ner qa xsr)."})
    languages: Optional[List[str]] = field(default=None, metadata={"help": "Language folders, in column order "
                                                                           "(default: es ru vi hi, then the others)."})
    seeds: Optional[List[int]] = field(default=None, metadata={"help": "Only these seeds (default: every seedN)."})
    split: List[str] = field(default_factory=lambda: ["test"], metadata={
        "help": "Which predictions_{split}_{set}.jsonl files to read: SPLIT for every task, TASK=SPLIT for one "
                "(e.g. `test ner=eval` when the NER test files are unlabelled, as XTREME's local copies)."})
    alpha: float = field(default=ALPHA, metadata={"help": "Significance level of the marks."})
    n_resamples: int = field(default=N_RESAMPLES, metadata={"help": "Permutations of the NER test."})
    permutation_seed: int = field(default=0, metadata={"help": "Seed of the NER permutation test."})
    ner_metric: str = field(default="token", metadata={
        "help": "NER F1 of the table and its permutation test: `token` (token-level micro F1, every tag but O a "
                "class: the paper's text) or `entity` (seqeval's entity-level F1: the paper's released code).",
        "choices": list(NER_METRICS)})
    digits: int = field(default=1, metadata={"help": "Decimals of the percentages in the tables."})
    report_to: Optional[List[str]] = field(default=None, metadata={"help": "'wandb' also logs every table as a "
                                                                           "W&B Table (offline mode works)."})
    wandb_project: str = field(default="hf-xladjust", metadata={"help": "W&B project of --report_to wandb."})

    def __post_init__(self):
        unknown = sorted(t for t in self.tasks or () if task_kind(t) is None)
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {list(TASKS)} or a variant TASK_NAME")
        if self.ner_metric not in NER_METRICS:
            raise ValueError(f"--ner_metric must be one of {list(NER_METRICS)}, got {self.ner_metric!r}")
        self.split_of(TASKS[0])  # checks the --split entries
        unknown = sorted(set(self.report_to or ()) - {"wandb", "none"})
        if unknown:
            raise ValueError(f"--report_to supports wandb (or none), got {unknown}")


    def split_of(self, task: str) -> str:
        """The split read for `task`: its TASK=SPLIT entry (a variant `ner_x` also takes `ner`'s), else the
        plain SPLIT entry (default test)."""
        default, per_task = "test", {}
        for entry in self.split:
            name, sep, value = entry.partition("=")
            if not sep:
                default = entry
            elif task_kind(name) and value:
                per_task[name] = value
            else:
                raise ValueError(f"--split takes SPLIT or TASK=SPLIT (task in {list(TASKS)}), got {entry!r}")
        return per_task.get(task, per_task.get(task_kind(task), default))


def build_report(results_dir: str, args: ReportArguments) -> dict:
    """Read, test and tabulate every task; returns the JSON report (tables included)."""
    if not os.path.isdir(results_dir):
        raise InputError("not a folder", results_dir)
    folders = [t for t in os.listdir(results_dir) if task_kind(t) and os.path.isdir(os.path.join(results_dir, t))]
    tasks = args.tasks or sorted(folders, key=lambda t: (TASKS.index(task_kind(t)), t))
    if not tasks:
        raise InputError(f"no task folder ({', '.join(TASKS)}) in the results folder", results_dir)
    report = {"settings": {"results_dir": os.path.abspath(results_dir), **asdict(args),
                           "std": "over seeds, ddof=1", "metric_scale": "fractions (tables show x100)",
                           "ner_measure": NER_MEASURES[args.ner_metric]},
              "tasks": {}}
    for task in tasks:
        if not os.path.isdir(os.path.join(results_dir, task)):
            raise InputError(f"no {task} folder", results_dir)
        split = args.split_of(task)
        found = discover(results_dir, task, split, args.languages, args.seeds)
        if not found:
            logger.warning("%s: no predictions_%s_*.jsonl files in any {regime}/{lang}/seedN folder",
                           os.path.join(results_dir, task), split)
            continue
        kind = task_kind(task)
        columns = {}
        for col, files in found.items():
            try:
                columns[col] = column_statistics(kind, files, args.alpha, args.n_resamples, args.permutation_seed,
                                                 args.ner_metric)
            except UnscoredSet as e:
                logger.warning("%s: an unlabelled set (no scores), column %s left out", e.path, col.label)
        if not columns:
            continue
        header, rows = task_table(kind, columns, args.digits)
        measure = f"{NER_MEASURES[args.ner_metric]}; " if kind == "ner" else ""
        test = TESTS[kind].format(ner_metric=args.ner_metric)
        note = (f"Split {split}; {measure}mean over seeds ({_seed_note(columns)} seeds), x100. `*` differs from "
                f"Original, `**` from Adjusted (p < {args.alpha:g}; {test}).")
        p_header, p_rows = p_value_table(kind, columns)
        title = TITLES[kind].format(ner_metric=args.ner_metric) + ("" if task == kind else f" ({task})")
        report["tasks"][task] = {
            "title": title, "split": split, "note": note,
            "header": header, "rows": rows,
            "regimes": {r: row_label(r) for r in ordered_regimes(r for cells in columns.values() for r in cells)},
            **({"measure": NER_MEASURES[args.ner_metric], "ner_metric": args.ner_metric} if kind == "ner" else {}),
            "markdown": to_markdown(header, rows), "csv": to_csv(header, rows),
            "p_values_markdown": to_markdown(p_header, p_rows) if p_rows else "",
            "columns": [{"label": col.label, "lang": col.lang, "set": col.set_name, "english": col.english,
                         "cells": cells} for col, cells in columns.items()],
        }
    return report


def write_report(report: dict, output_dir: str) -> str:
    os.makedirs(output_dir, exist_ok=True)
    parts = []
    for task, t in report["tasks"].items():
        with atomic_write(os.path.join(output_dir, f"{task}.md")) as f:
            f.write(t["markdown"])
        with atomic_write(os.path.join(output_dir, f"{task}.csv")) as f:
            f.write(t["csv"])
        parts.append(f"## {t['title']}\n\n{t['markdown']}\n{t['note']}\n")
        if t["p_values_markdown"]:
            parts.append(t["p_values_markdown"])
    markdown = "\n".join(parts)
    with atomic_write(os.path.join(output_dir, "report.md")) as f:
        f.write(markdown)
    write_json(os.path.join(output_dir, "report.json"), report)
    return markdown


def plot_layer_curves(report: dict, output_dir: str) -> List[str]:
    """`{task}_layers.png` for each retrieval table: MRR at every layer (hidden state 0 = embeddings), one
    panel per column, one line per model state (mean over seeds), the best layer marked."""
    tables = {task: t for task, t in report["tasks"].items() if task_kind(task) == "xsr"}
    if not tables:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for task, t in tables.items():
        columns = t["columns"]
        fig, axes = plt.subplots(1, len(columns), figsize=(3.2 * len(columns), 3), sharey=True, squeeze=False)
        for ax, col in zip(axes[0], columns):
            for regime, cell in col["cells"].items():
                mrr = 100 * np.asarray(cell["mrr_by_layer"])
                line, = ax.plot(range(len(mrr)), mrr, marker=".", label=row_label(regime))
                ax.plot([cell["best_layer"]], [mrr[cell["best_layer"]]], "o", color=line.get_color())
            ax.set_title(col["label"])
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_xlabel("layer (hidden state)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("MRR x100")
        handles = {h.get_label(): h for ax in axes[0] for h in ax.get_lines() if not h.get_label().startswith("_")}
        axes[0][-1].legend(list(handles.values()), list(handles), fontsize="small")  # every state, in any panel
        fig.suptitle(t["title"], fontsize="medium")
        fig.tight_layout()
        path = os.path.join(output_dir, f"{task}_layers.png")
        fig.savefig(path, dpi=110, metadata={"Software": None})
        plt.close(fig)
        written.append(path)
    return written


def log_to_wandb(report: dict, project: str) -> None:
    import wandb

    run = wandb.init(project=project, job_type="report", config=report["settings"])
    run.log({f"tables/{task}": wandb.Table(columns=t["header"], data=t["rows"])
             for task, t in report["tasks"].items()})
    run.finish()


def build_parser():
    from hf_xladjust.cli import script_parser

    parser = script_parser(ReportArguments, "Tables 2-5 of the paper (means over seeds, significance marks) from "
                           "the\nprediction files of a results folder. Example:\n\n"
                           "    python -m hf_xladjust.report results/paper --tasks nli --languages es\n",
                           prog="python -m hf_xladjust.report", require_output_dir=False)
    parser.add_argument("results_dir", metavar="RESULTS_DIR",
                        help="The grid's results folder: {task}/{regime}/{lang}/seed{n}/predictions_*.jsonl.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, rest = parser.parse_args_into_dataclasses(argv)
    except ValueError as e:  # a __post_init__ check
        parser.error(str(e))
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO,
                        datefmt="%m/%d/%Y %H:%M:%S", handlers=[logging.StreamHandler(sys.stderr)])
    output_dir = args.output_dir or os.path.join(rest.results_dir, "report")
    try:
        report = build_report(rest.results_dir, args)
    except InputError as e:
        print(f"hf_xladjust.report: error: {e}", file=sys.stderr)
        return 1
    print(write_report(report, output_dir))
    plots = plot_layer_curves(report, output_dir)
    print(f"wrote {os.path.join(output_dir, 'report.md')}, report.json and one .md/.csv per task"
          + "".join(f", {os.path.basename(p)}" for p in plots))
    if "wandb" in (args.report_to or ()):
        log_to_wandb(report, args.wandb_project)
    return 0


if __name__ == "__main__":
    sys.exit(main())
