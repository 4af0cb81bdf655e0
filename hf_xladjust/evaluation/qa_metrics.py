"""Extractive-QA exact match and token F1, as the official evaluation scripts define them.

Two normalisations, written from the scripts' definitions (transformers 5 dropped `squad_metrics` and
`evaluate.load` needs the Hub):

- SQuAD v1.1 (`evaluate-v1.1.py`; also XQuAD and TyDi QA GoldP in XTREME): lowercase, delete the
  characters of `string.punctuation`, replace the English articles `a`, `an`, `the` (whole words) by a
  space, and collapse whitespace.
- MLQA (`mlqa_evaluation_v1.py`), for the language of the answer (= of the context): lowercase, delete
  every character whose Unicode category starts with "P" and those of `string.punctuation`, replace the
  language's articles by a space (en a/an/the; es un/una/unos/unas/el/la/los/las; vi của/là/cái/chiếc/
  những; de ein/eine/einen/einem/eines/einer/der/die/das/den/dem/des; ar every "ال"; hi and zh none),
  then split into tokens on whitespace (en es hi vi de ar) or, for zh, with each CJK character
  (U+4E00-U+9FA5) and punctuation mark as a token of its own, and join them with single spaces.

Both scripts then compare whitespace tokens of the normalised strings: F1 from the bag-of-tokens overlap
(0 when nothing is shared, so also when both sides normalise to nothing), exact match of the normalised
strings, each the maximum over the gold answers; a set's score is 100 × the mean over its questions
(a question without a prediction scores 0).
"""
import functools
import re
import string
import sys
import unicodedata
from collections import Counter
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

_SQUAD_PUNCT = frozenset(string.punctuation)
_EN_ARTICLES = re.compile(r"\b(a|an|the)\b")
# The per-language article patterns of mlqa_evaluation_v1.py. Arabic's first alternative (`\sال^`) can
# never match; it is kept so that the pattern is the script's.
_MLQA_ARTICLES = {
    "en": _EN_ARTICLES,
    "es": re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b"),
    "vi": re.compile(r"\b(của|là|cái|chiếc|những)\b"),
    "de": re.compile(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b"),
    "ar": re.compile(r"\sال^|ال"),
    "hi": None,
    "zh": None,
}
MLQA_LANGUAGES = tuple(sorted(_MLQA_ARTICLES))
_WHITESPACE_LANGS = frozenset({"en", "es", "hi", "vi", "de", "ar"})
_CJK = re.compile(r"[\u4e00-\u9fa5]")


@functools.lru_cache(maxsize=1)
def mlqa_punctuation() -> frozenset:
    """MLQA's punctuation: every code point below `sys.maxunicode` whose Unicode category starts with
    "P", plus `string.punctuation` (which adds the ASCII symbols $+<=>^`|~ of categories S*)."""
    return frozenset(chr(i) for i in range(sys.maxunicode)
                     if unicodedata.category(chr(i)).startswith("P")).union(string.punctuation)


def squad_normalize(text: str) -> str:
    """SQuAD v1.1's `normalize_answer`."""
    text = "".join(ch for ch in text.lower() if ch not in _SQUAD_PUNCT)
    return " ".join(_EN_ARTICLES.sub(" ", text).split())


def _mixed_segmentation(text: str, punct: frozenset) -> List[str]:
    tokens, pending = [], ""
    for ch in text:
        if _CJK.search(ch) or ch in punct:
            tokens.extend(pending.split())
            pending = ""
            tokens.append(ch)
        else:
            pending += ch
    tokens.extend(pending.split())
    return tokens


def mlqa_normalize(text: str, lang: str) -> str:
    """mlqa_evaluation_v1.py's `normalize_answer(text, lang)`; `lang` is the answer's language."""
    if lang not in _MLQA_ARTICLES:
        raise ValueError(f"MLQA's evaluation has no rules for language {lang!r}; it knows {', '.join(MLQA_LANGUAGES)}")
    punct = mlqa_punctuation()
    text = "".join(ch for ch in text.lower() if ch not in punct)
    if _MLQA_ARTICLES[lang] is not None:
        text = _MLQA_ARTICLES[lang].sub(" ", text)
    tokens = text.split() if lang in _WHITESPACE_LANGS else _mixed_segmentation(text, punct)
    return " ".join(t for t in tokens if t.strip() != "")


def normalizer(metric: str = "squad", lang: Optional[str] = None) -> Callable[[str], str]:
    """The normalisation of `metric` ("squad" or "mlqa"; MLQA needs the answer language)."""
    if metric == "squad":
        return squad_normalize
    if metric == "mlqa":
        if lang is None:
            raise ValueError("the MLQA metric needs the answer (context) language")
        mlqa_normalize("", lang)  # unknown language: fail now, not on the first question
        return functools.partial(mlqa_normalize, lang=lang)
    raise ValueError(f"unknown QA metric {metric!r}; expected 'squad' or 'mlqa'")


def token_f1(prediction: str, gold: str, normalize: Callable[[str], str] = squad_normalize) -> float:
    """Token F1 (in [0, 1]) of two answers after `normalize`."""
    pred_tokens, gold_tokens = normalize(prediction).split(), normalize(gold).split()
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, gold: str, normalize: Callable[[str], str] = squad_normalize) -> bool:
    return normalize(prediction) == normalize(gold)


def score_answer(prediction: str, golds: Sequence[str],
                 normalize: Callable[[str], str] = squad_normalize) -> Tuple[float, bool]:
    """(F1, exact match) of one prediction: the maximum over the gold answers."""
    if not golds:
        raise ValueError("a question needs at least one gold answer")
    return (max(token_f1(prediction, g, normalize) for g in golds),
            max(exact_match(prediction, g, normalize) for g in golds))


def qa_scores(predictions: Mapping[str, str], golds: Mapping[str, Sequence[str]], metric: str = "squad",
              lang: Optional[str] = None) -> Tuple[Dict[str, float], Dict[str, Tuple[float, bool]]]:
    """Score a set as the official scripts do. `golds` maps every question id to its gold answers;
    a question missing from `predictions` scores 0. Returns `({"exact_match", "f1"}` in percent over
    all questions, `{id: (f1, em)}` per question)."""
    if not golds:
        raise ValueError("no questions to score")
    norm = normalizer(metric, lang)
    per_question = {qid: score_answer(predictions[qid], answers, norm) if qid in predictions else (0.0, False)
                    for qid, answers in golds.items()}
    n = len(per_question)
    return ({"exact_match": 100.0 * sum(em for _, em in per_question.values()) / n,
             "f1": 100.0 * sum(f1 for f1, _ in per_question.values()) / n}, per_question)
