"""Parallel corpora: two line-aligned files, or one file of ``src ||| tgt`` lines (fast_align's format).

A sentence is the whitespace split of its line (``str.split()``): the same words the aligner sees,
since the aligners are fed these words joined by single spaces. Files are read as bytes and decoded
line by line, so that an undecodable byte is reported with its line number.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from hf_xladjust.errors import InputError
from hf_xladjust.files import decode_line, read_lines
from hf_xladjust.sampling import subsample_indices

logger = logging.getLogger(__name__)

SEPARATOR = "|||"

# Reasons a line can be skipped with ``skip_bad_lines=True`` (keys of ``ParallelCorpus.skipped``).
EMPTY_SIDE = "empty_side"
MALFORMED = "malformed_separator"
UNDECODABLE = "undecodable"


@dataclass
class ParallelCorpus:
    """Sentence pairs as word lists, with the 1-based line each pair comes from."""

    src: List[List[str]]
    tgt: List[List[str]]
    line_numbers: List[int]
    source_path: str
    target_path: str
    skipped: Dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if not len(self.src) == len(self.tgt) == len(self.line_numbers):
            raise ValueError(f"src, tgt and line_numbers differ in length: "
                             f"{len(self.src)}, {len(self.tgt)}, {len(self.line_numbers)}")

    def __len__(self) -> int:
        return len(self.src)

    def subset(self, indices: Iterable[int]) -> "ParallelCorpus":
        """The pairs at ``indices`` (positions in this corpus), in the order given."""
        indices = list(indices)
        return ParallelCorpus(src=[self.src[i] for i in indices], tgt=[self.tgt[i] for i in indices],
                              line_numbers=[self.line_numbers[i] for i in indices],
                              source_path=self.source_path, target_path=self.target_path,
                              skipped=dict(self.skipped))


def _check_encoding(encoding: str) -> None:
    if "\n".encode(encoding) != b"\n":
        raise ValueError(f"encoding {encoding!r} is not ASCII-compatible; lines are split on the newline byte")


def read_parallel(source_file: Optional[str] = None, target_file: Optional[str] = None,
                  train_file: Optional[str] = None, *, skip_bad_lines: bool = False,
                  encoding: str = "utf-8") -> ParallelCorpus:
    """Read a parallel corpus from ``source_file`` + ``target_file`` (line-aligned) or ``train_file``
    (``src ||| tgt`` lines).

    Bad lines (an empty side, a ``|||`` line without exactly one separator, undecodable bytes) raise
    :class:`InputError` naming the file and line, or with ``skip_bad_lines=True`` are dropped (both
    sides) and counted in ``skipped``. Two files with different line counts always raise: that is
    a misalignment, and skipping lines could never repair it.
    """
    _check_encoding(encoding)
    if train_file is not None:
        if source_file is not None or target_file is not None:
            raise ValueError("give either source_file and target_file, or train_file, not both")
        pairs = _read_joint(str(train_file), encoding)
        source_path = target_path = str(train_file)
    elif source_file is not None and target_file is not None:
        source_path, target_path = str(source_file), str(target_file)
        pairs = _read_two_files(source_path, target_path, encoding)
    else:
        raise ValueError("give source_file and target_file (line-aligned), or train_file (src ||| tgt lines)")

    src, tgt, line_numbers = [], [], []
    skipped: Counter = Counter()
    examples: Dict[str, str] = {}
    for line_no, s, t, error in pairs:
        if error is not None:
            reason, exc = error
            if not skip_bad_lines:
                raise exc
            skipped[reason] += 1
            examples.setdefault(reason, str(exc))
            continue
        src.append(s)
        tgt.append(t)
        line_numbers.append(line_no)
    if skipped:
        logger.warning("skipped %d bad line(s) of %s: %s (first: %s)", sum(skipped.values()),
                       source_path if source_path == target_path else f"{source_path} / {target_path}",
                       dict(skipped), "; ".join(examples.values()))
    if not src:
        detail = f" ({sum(skipped.values())} bad line(s) skipped)" if skipped else ""
        other = "" if source_path == target_path else f" (target file {target_path})"
        raise InputError(f"no sentence pairs{detail}{other}", source_path)
    logger.info("read %d sentence pairs from %s", len(src),
                source_path if source_path == target_path else f"{source_path} and {target_path}")
    return ParallelCorpus(src, tgt, line_numbers, source_path, target_path, dict(skipped))


_Pair = Tuple[int, Optional[List[str]], Optional[List[str]], Optional[Tuple[str, InputError]]]


def _read_lines(path: str) -> List[bytes]:
    try:
        return read_lines(path)
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror})", path) from None


def _read_two_files(source_path: str, target_path: str, encoding: str) -> List[_Pair]:
    src_lines, tgt_lines = _read_lines(source_path), _read_lines(target_path)
    if len(src_lines) != len(tgt_lines):
        longer, shorter = ((source_path, target_path) if len(src_lines) > len(tgt_lines)
                           else (target_path, source_path))
        n = min(len(src_lines), len(tgt_lines))
        raise InputError(f"the files are not line-aligned: {source_path} has {len(src_lines)} lines but "
                         f"{target_path} has {len(tgt_lines)}; {shorter} ends after line {n}, "
                         f"so line {n + 1} of {longer} has no counterpart", longer, n + 1)
    pairs: List[_Pair] = []
    for line_no, (raw_s, raw_t) in enumerate(zip(src_lines, tgt_lines), start=1):
        try:
            s = decode_line(raw_s, source_path, line_no, encoding).split()
            t = decode_line(raw_t, target_path, line_no, encoding).split()
        except InputError as e:
            pairs.append((line_no, None, None, (UNDECODABLE, e)))
            continue
        if not s or not t:
            path = source_path if not s else target_path
            side = "source" if not s else "target"
            pairs.append((line_no, None, None,
                          (EMPTY_SIDE, InputError(f"empty {side} sentence", path, line_no))))
            continue
        pairs.append((line_no, s, t, None))
    return pairs


def _read_joint(path: str, encoding: str) -> List[_Pair]:
    pairs: List[_Pair] = []
    for line_no, raw in enumerate(_read_lines(path), start=1):
        try:
            words = decode_line(raw, path, line_no, encoding).split()
        except InputError as e:
            pairs.append((line_no, None, None, (UNDECODABLE, e)))
            continue
        n_sep = words.count(SEPARATOR)
        if n_sep != 1:
            pairs.append((line_no, None, None, (MALFORMED, InputError(
                f"expected exactly one ' {SEPARATOR} ' separator between source and target, found {n_sep}",
                path, line_no))))
            continue
        k = words.index(SEPARATOR)
        s, t = words[:k], words[k + 1:]
        if not s or not t:
            side = "source" if not s else "target"
            pairs.append((line_no, None, None,
                          (EMPTY_SIDE, InputError(f"empty {side} side of the ' {SEPARATOR} ' line", path, line_no))))
            continue
        pairs.append((line_no, s, t, None))
    return pairs


def sample_corpus(corpus: ParallelCorpus, max_sentences: Optional[int], seed: int) -> ParallelCorpus:
    """``max_sentences`` pairs drawn with `subsample_indices` and kept in file order.

    Returns ``corpus`` itself when ``max_sentences`` is None or not smaller than the corpus.
    """
    if max_sentences is None or max_sentences >= len(corpus):
        return corpus
    indices = subsample_indices(len(corpus), max_sentences, seed)
    logger.info("sampled %d of %d sentence pairs (seed %d)", max_sentences, len(corpus), seed)
    return corpus.subset(indices)


# ----------------------------------------------------------------------------- Hub translation datasets
@dataclass
class TranslationDataset:
    """A parallel corpus on the Hub (or a local folder laid out as one): a split of a dataset whose
    `translation` column maps language codes to sentences, as Helsinki-NLP/opus-100 (config `en-es`,
    splits train/validation/test, `translation` {en, es}: https://huggingface.co/datasets/Helsinki-NLP/opus-100,
    tree/main/en-es). `hub_kwargs` (cache_dir, token) go to `datasets.load_dataset`."""

    name: str
    config: Optional[str] = None
    split: str = "train"
    hub_kwargs: Dict = field(default_factory=dict)

    def read(self, source_lang: Optional[str] = None, target_lang: Optional[str] = None, *,
             skip_bad_lines: bool = False) -> ParallelCorpus:
        return read_translation_dataset(self.name, self.config, self.split, source_lang, target_lang,
                                        skip_bad_lines=skip_bad_lines, **self.hub_kwargs)


def translation_sides(languages: List[str], source_lang: Optional[str], target_lang: Optional[str],
                      where: str) -> Tuple[str, str]:
    """Which of a translation column's languages is the source side and which the target: the ones
    named, else English as the source (or the side that --target_lang en leaves) and the other one."""
    source = source_lang or ("en" if target_lang != "en" else None)
    if source is None or target_lang is None:
        others = [lang for lang in languages if lang not in (source, target_lang)]
        if len(others) != 1:
            raise InputError(f"the translation column has languages {', '.join(languages)}: say which pair with "
                             "--source_lang and --target_lang", where)
        source, target_lang = (source, others[0]) if source else (others[0], target_lang)
    for side, lang in (("source", source), ("target", target_lang)):
        if lang not in languages:
            raise InputError(f"no {side} language {lang!r} in the translation column (it has "
                             f"{', '.join(languages)})", where)
    return source, target_lang


def read_translation_dataset(name: str, config: Optional[str] = None, split: str = "train",
                             source_lang: Optional[str] = None, target_lang: Optional[str] = None, *,
                             skip_bad_lines: bool = False, **hub_kwargs) -> ParallelCorpus:
    """Read the `translation` column of a Hub dataset split into the sentence pairs `read_parallel`
    returns for files: each side split on whitespace, row k as "line" k + 1 (what --alignment_file lines
    and error messages count), an empty side an error or, with `skip_bad_lines`, skipped and counted."""
    from hf_xladjust.hub_data import canonical_dataset_id, load_hub_split

    name = canonical_dataset_id(name, "--parallel_dataset")
    where = f"{name}[{config}]:{split}" if config else f"{name}:{split}"
    data = load_hub_split(name, config, split, option="--parallel_dataset", **hub_kwargs)
    if "translation" not in data.column_names:
        raise InputError(f"no 'translation' column (columns: {', '.join(data.column_names)})", where)
    feature = data.features["translation"]  # a Translation feature, or a struct of one string per language
    languages = list(getattr(feature, "languages", None) or (feature.keys() if isinstance(feature, dict) else []))
    source, target = translation_sides(languages, source_lang, target_lang, where)
    flat = data.select_columns(["translation"]).flatten()
    source_path, target_path = f"{where} translation.{source}", f"{where} translation.{target}"
    src, tgt, line_numbers = [], [], []
    skipped: Counter = Counter()
    first = None
    for k, (s, t) in enumerate(zip(flat[f"translation.{source}"], flat[f"translation.{target}"]), start=1):
        s, t = (s or "").split(), (t or "").split()
        if not s or not t:
            error = InputError(f"empty {'source' if not s else 'target'} sentence (row {k})",
                               source_path if not s else target_path)
            if not skip_bad_lines:
                raise error
            skipped[EMPTY_SIDE] += 1
            first = first or str(error)
            continue
        src.append(s)
        tgt.append(t)
        line_numbers.append(k)
    if skipped:
        logger.warning("skipped %d bad row(s) of %s: %s (first: %s)", sum(skipped.values()), where, dict(skipped),
                       first)
    if not src:
        raise InputError(f"no sentence pairs ({sum(skipped.values())} bad row(s) skipped)", where)
    logger.info("read %d sentence pairs (%s -> %s) from %s", len(src), source, target, where)
    return ParallelCorpus(src, tgt, line_numbers, source_path, target_path, dict(skipped))


@dataclass
class ParallelDatasetArguments:
    """A parallel corpus from a Hub dataset with a `translation` column instead of files; shared by
    run_adjust.py (`AdjustDataArguments`) and the continual mode (`ContinualAlignArguments`)."""

    parallel_dataset: Optional[str] = field(
        default=None,
        metadata={"help": "Or: a Hub dataset (namespace/name, or a local folder laid out as one) with a 'translation' "
                          "column, e.g. Helsinki-NLP/opus-100; read into the same sentence pairs as the files (same "
                          "filters, sampling and alignment). --source_lang/--target_lang pick its two languages "
                          "(default: English and the other one)."},
    )
    parallel_config: Optional[str] = field(
        default=None, metadata={"help": "Config of --parallel_dataset (e.g. en-es for Helsinki-NLP/opus-100)."}
    )
    parallel_split: str = field(default="train", metadata={"help": "Split of --parallel_dataset."})

    def translation_dataset(self, **hub_kwargs) -> Optional[TranslationDataset]:
        """The dataset named by these options (None when none is)."""
        if not self.parallel_dataset:
            return None
        return TranslationDataset(self.parallel_dataset, self.parallel_config, self.parallel_split, hub_kwargs)
