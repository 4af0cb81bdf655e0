"""NER scores over word-level BIO tags: token-level micro F1 and seqeval's entity-level P/R/F1.

Token-level micro F1 (the paper's NER measure). Every word is one decision. The classes that enter
the micro average are all tags except `O`, each full tag its own class (`B-PER` and `I-PER` differ):

    tp = words with pred == gold != O
    fp = words with pred != O and pred != gold
    fn = words with gold != O and pred != gold
    P = tp / (tp + fp), R = tp / (tp + fn), F1 = 2tp / (2tp + fp + fn)   (0 when a denominator is 0)

`O` is never a class of its own: a word tagged `O` on both sides counts nowhere, and a confusion
between two entity tags is both a false positive and a false negative (as in scikit-learn's
`f1_score(average="micro", labels=<every tag but O>)`). Counting `O` as a class would make micro F1
equal to word accuracy, which `O` (about half of WikiANN's words) dominates; that accuracy is
reported separately as `accuracy`.

Entity-level precision/recall/F1 are those of `seqeval.metrics` in its default (conlleval-compatible)
mode, as XTREME's `run_tag.py` and the HF token-classification example compute them: an entity is a
maximal B-/I- span of one type (a stray `I-X` opens one), and only exact spans of the right type count.
"""
import itertools
from typing import Dict, Sequence, Tuple

import numpy as np

OUTSIDE = "O"


def counts(gold_tags: Sequence[str], pred_tags: Sequence[str], outside: str = OUTSIDE) -> Tuple[int, int, int]:
    """(tp, fp, fn) of one sentence for token-level micro F1 (see the module docstring). The counts of
    several sentences add up, so a paired permutation test can re-score F1 from per-sentence counts."""
    if len(gold_tags) != len(pred_tags):
        raise ValueError(f"{len(gold_tags)} gold tags but {len(pred_tags)} predicted tags")
    gold, pred = np.asarray(gold_tags, dtype=object), np.asarray(pred_tags, dtype=object)
    return _counts(gold, pred, outside)


def _counts(gold: np.ndarray, pred: np.ndarray, outside: str) -> Tuple[int, int, int]:
    same = gold == pred
    return (int((same & (gold != outside)).sum()), int((~same & (pred != outside)).sum()),
            int((~same & (gold != outside)).sum()))


def _flatten(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> Tuple[np.ndarray, np.ndarray]:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted ones")
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted tags")
    flat = [np.asarray([t for s in side for t in s], dtype=object) for side in (gold, pred)]
    return flat[0], flat[1]


def prf(tp: int, fp: int, fn: int) -> Tuple[float, float, float]:
    """Precision, recall and F1 from counts; 0 for an empty denominator."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0
    return precision, recall, f1


def token_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                 outside: str = OUTSIDE) -> Dict[str, float]:
    """Token-level micro precision, recall and F1 over sentences of word tags, and word accuracy."""
    g, p = _flatten(gold, pred)
    precision, recall, f1 = prf(*_counts(g, p, outside))
    return {"token_precision": precision, "token_recall": recall, "token_f1": f1,
            "accuracy": float((g == p).mean()) if g.size else 0.0}


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                  per_type: bool = False) -> Dict[str, float]:
    """seqeval's entity-level micro precision, recall and F1 (default mode); with `per_type`, also
    `{type}_precision`/`_recall`/`_f1`/`_number` for every entity type in the gold or predicted tags."""
    from seqeval.metrics import classification_report
    from seqeval.metrics.sequence_labeling import precision_recall_fscore_support

    _flatten(gold, pred)  # the same shape checks as the token scores
    gold, pred = [list(s) for s in gold], [list(s) for s in pred]
    # what seqeval's precision_score/recall_score/f1_score return, from one pass over the entities
    precision, recall, f1, _ = precision_recall_fscore_support(gold, pred, average="micro", zero_division=0)
    scores = {"precision": float(precision), "recall": float(recall), "f1": float(f1)}
    if per_type:
        report = classification_report(gold, pred, output_dict=True, zero_division=0)
        for name, values in report.items():
            if name.endswith(" avg"):
                continue
            for key, short in (("precision", "precision"), ("recall", "recall"), ("f1-score", "f1"),
                               ("support", "number")):
                scores[f"{name}_{short}"] = float(values[key]) if short != "number" else int(values[key])
    return scores


def tagging_metrics(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                    per_type: bool = False) -> Dict[str, float]:
    """Every NER score of a set: token_f1/token_precision/token_recall (token-level micro, without `O`),
    f1/precision/recall (seqeval entity level) and accuracy (all words, `O` included)."""
    return {**token_scores(gold, pred), **entity_scores(gold, pred, per_type)}



# ----------------------------------------------------------------------------- per-sentence counts, many at once
LEVELS = ("token", "entity")


def entity_counts(gold_tags: Sequence[str], pred_tags: Sequence[str]) -> Tuple[int, int, int]:
    """(tp, fp, fn) of one sentence for seqeval's entity-level micro F1: tp = predicted entities
    (type, start, end) that are gold entities, fp = the other predicted ones, fn = the missed gold ones.
    seqeval scores a list of sentences as if they were joined with an `O` between them, so no entity
    crosses a sentence boundary and the counts of several sentences add up to seqeval's."""
    from seqeval.metrics.sequence_labeling import get_entities

    if len(gold_tags) != len(pred_tags):
        raise ValueError(f"{len(gold_tags)} gold tags but {len(pred_tags)} predicted tags")
    gold, pred = set(get_entities(list(gold_tags))), set(get_entities(list(pred_tags)))
    tp = len(gold & pred)
    return tp, len(pred) - tp, len(gold) - tp


def _lengths(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> np.ndarray:
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted ones")
    lengths = np.fromiter(map(len, gold), dtype=np.int64, count=len(gold))
    pred_lengths = np.fromiter(map(len, pred), dtype=np.int64, count=len(pred))
    bad = np.flatnonzero(lengths != pred_lengths)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"sentence {i}: {lengths[i]} gold tags but {pred_lengths[i]} predicted tags")
    return lengths


def _sum_by_sentence(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Per-sentence sums of the rows of `values` (the sentences' tags laid end to end). reduceat would
    give an empty sentence the next tag's value, so it runs over the non-empty sentences only: their
    starts increase strictly and each slice ends where the next non-empty sentence starts."""
    out = np.zeros((len(lengths),) + values.shape[1:], dtype=np.int64)
    nonempty = lengths > 0
    if nonempty.any():
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        out[nonempty] = np.add.reduceat(values, starts[nonempty], axis=0)
    return out


def sentence_counts(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], level: str = "token",
                    outside: str = OUTSIDE) -> np.ndarray:
    """(sentences, 3) int64 array of per-sentence (tp, fp, fn): `level="token"` those of `counts`,
    `"entity"` those of `entity_counts`, for many sentences at once.

    Token level compares all tags in one array operation and sums them per sentence. Entity level
    extracts the entities of all sentences in one call of seqeval's `get_entities` per side (on the
    sentences as seqeval joins them, an `O` between two), matches them as one set and counts them per
    sentence with `bincount`; the extraction itself is seqeval's Python loop over the tags, one pass."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    lengths = _lengths(gold, pred)
    if level == "token":
        flat = [np.asarray(list(itertools.chain.from_iterable(side)), dtype=str) for side in (gold, pred)]
        g, p = flat
        same = g == p
        hits = np.stack([same & (g != outside), ~same & (p != outside), ~same & (g != outside)], axis=1)
        return _sum_by_sentence(hits.astype(np.int64), lengths)

    from seqeval.metrics.sequence_labeling import get_entities

    # Where each sentence starts in seqeval's joined sequence (one separator `O` after every sentence).
    joined_starts = np.concatenate([[0], np.cumsum(lengths + 1)[:-1]])
    entities = [set(get_entities([list(s) for s in side])) for side in (gold, pred)]
    tp_set = entities[0] & entities[1]

    def per_sentence(found) -> np.ndarray:
        starts = np.fromiter((start for _, start, _ in found), dtype=np.int64, count=len(found))
        sentence = np.searchsorted(joined_starts, starts, side="right") - 1
        return np.bincount(sentence, minlength=len(lengths)).astype(np.int64)

    tp, n_gold, n_pred = per_sentence(tp_set), per_sentence(entities[0]), per_sentence(entities[1])
    return np.stack([tp, n_pred - tp, n_gold - tp], axis=1)
