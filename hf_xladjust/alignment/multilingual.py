"""Several target languages in one adjustment, as Cao et al. (ICLR 2020) adjusted five at once.

`--parallel es=en-es.txt ru=en.txt,ru.txt` names one corpus per language. Each goes through
`build_aligned_pairs` on its own (its own filters, its own sample drawn with the run's seed, its own
alignment), exactly as a one-language run would, and the pairs are pooled into one training set. The
Trainer's default random sampler shuffles the pool, so batches mix the languages.
"""
import os
import re
from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Sequence, Tuple

from hf_xladjust.alignment.pairs import AlignedPair, AlignmentDataArguments, alignable_indices, build_aligned_pairs
from hf_xladjust.alignment.parallel import ParallelDatasetArguments
from hf_xladjust.errors import InputError
from hf_xladjust.files import InputPath

# ISO 639-1/639-3 codes, optionally with subtags (zh-Hans, pt-BR): the names the rest of the toolkit uses.
LANG_CODE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})*")
SPEC_FORM = "LANG=FILE (one 'en ||| xx' file) or LANG=SOURCE_FILE,TARGET_FILE (two line-aligned files)"


@dataclass
class LanguageCorpus:
    """One `--parallel` entry: the non-English language, its files and (pharaoh) its alignment file."""

    lang: str
    source_file: Optional[str] = None
    target_file: Optional[str] = None
    train_file: Optional[str] = None
    alignment_file: Optional[str] = None


def _split_lang(value: str, flag: str, form: str) -> Tuple[str, str]:
    lang, sep, rest = value.partition("=")
    if not sep or not rest:
        raise ValueError(f"{flag} {value!r}: expected {form}")
    if not LANG_CODE.fullmatch(lang):
        raise ValueError(f"{flag} {value!r}: {lang!r} is not a language code (2 or 3 lowercase letters such as "
                         "es, ru, hi, optionally with a subtag such as zh-Hans)")
    if lang == "en":
        raise ValueError(f"{flag} {value!r}: English is the anchored side of every corpus; name each corpus by "
                         "its other language")
    return lang, rest


def parse_parallel(values: Sequence[str], alignment_files: Optional[Sequence[str]] = None) -> List[LanguageCorpus]:
    """`--parallel` and `--alignment_files` values as corpora, in the order given; any other form is an error."""
    corpora: Dict[str, LanguageCorpus] = {}
    for value in values:
        lang, spec = _split_lang(value, "--parallel", SPEC_FORM)
        if lang in corpora:
            raise ValueError(f"--parallel names {lang} twice")
        files = spec.split(",")
        if len(files) > 2 or not all(files):
            raise ValueError(f"--parallel {value!r}: expected {SPEC_FORM}")
        corpora[lang] = (LanguageCorpus(lang, source_file=files[0], target_file=files[1]) if len(files) == 2
                         else LanguageCorpus(lang, train_file=files[0]))
    for value in alignment_files or ():
        lang, path = _split_lang(value, "--alignment_files", "LANG=FILE")
        if lang not in corpora:
            raise ValueError(f"--alignment_files {value!r}: {lang} is not a --parallel language "
                             f"({', '.join(corpora)})")
        corpora[lang].alignment_file = path
    return list(corpora.values())


def proportional_budget(sizes: Sequence[int], budget: int) -> List[int]:
    """Split `budget` sentences in proportion to `sizes` by the largest-remainder rule: each corpus gets
    floor(budget * size / total), and the sentences left over go one each to the corpora with the
    largest remainders, ties to the one listed first. The counts add up to `budget` exactly (every
    corpus whole when `budget` >= total) and never exceed a corpus's size. Integer arithmetic only."""
    total = sum(sizes)
    if budget >= total:
        return list(sizes)
    counts = [budget * n // total for n in sizes]
    remainders = [budget * n % total for n in sizes]
    by_remainder = sorted(range(len(sizes)), key=lambda k: (-remainders[k], k))
    for k in by_remainder[: budget - sum(counts)]:
        counts[k] += 1
    return counts


@dataclass
class AdjustDataArguments(AlignmentDataArguments, ParallelDatasetArguments):
    """run_adjust.py's corpora: one (`--source_file/--target_file`, `--train_file` or a Hub dataset with a
    `translation` column, `--parallel_dataset`) or one per language (`--parallel`), plus the options every
    corpus shares (`AlignmentDataArguments`)."""

    source_file: Optional[str] = field(default=None, metadata={"help": "Source-language side, one sentence a line."})
    target_file: Optional[str] = field(default=None, metadata={"help": "Target-language side, line-aligned."})
    train_file: Optional[str] = field(default=None, metadata={"help": "One file of 'source ||| target' lines."})
    parallel: Optional[List[str]] = field(
        default=None,
        metadata={"help": "Several target languages in one run (Cao et al.), one corpus each: LANG=FILE ('en ||| xx' "
                          "lines) or LANG=SOURCE_FILE,TARGET_FILE (English first; --english_side target for "
                          "'xx ||| en'). Each is filtered, sampled (--max_sentences) and aligned on its own, "
                          "then pooled."},
    )
    alignment_files: Optional[List[str]] = field(
        default=None, metadata={"help": "With --parallel and --aligner pharaoh: LANG=FILE for every language."}
    )
    sample_proportionally: bool = field(
        default=False,
        metadata={"help": "With --parallel: --max_sentences is the total, split in proportion to the corpora's sizes "
                          "(largest remainder), instead of --max_sentences per language."},
    )

    def __post_init__(self):
        self.corpora: List[LanguageCorpus] = []
        if self.parallel:
            if self.source_file or self.target_file or self.train_file or self.parallel_dataset:
                raise ValueError("--parallel replaces --source_file, --target_file, --train_file and "
                                 "--parallel_dataset; give one or the other")
            if self.source_lang or self.target_lang:
                raise ValueError("--parallel names each corpus's language; drop --source_lang/--target_lang "
                                 "(--english_side target for 'xx ||| en' corpora)")
            if self.alignment_file:
                raise ValueError("with --parallel, give --alignment_files LANG=FILE (one per language), not "
                                 "--alignment_file")
            self.corpora = parse_parallel(self.parallel, self.alignment_files)
            missing = [c.lang for c in self.corpora if not c.alignment_file]
            if self.aligner == "pharaoh" and missing:
                raise ValueError(f"--aligner pharaoh needs an alignment file for every --parallel language; "
                                 f"missing: {', '.join(missing)} (--alignment_files {missing[0]}=FILE)")
            if self.aligner != "pharaoh" and self.alignment_files:
                raise ValueError("--alignment_files is read only with --aligner pharaoh")
            if self.sample_proportionally and not self.max_sentences:
                raise ValueError("--sample_proportionally splits --max_sentences; give it")
        else:
            if self.alignment_files or self.sample_proportionally:
                raise ValueError("--alignment_files and --sample_proportionally go with --parallel")
            if sum([bool(self.train_file), bool(self.source_file or self.target_file),
                    bool(self.parallel_dataset)]) != 1:
                raise ValueError("give one of --train_file, --source_file with --target_file, or --parallel_dataset "
                                 "(or --parallel)")
            if bool(self.source_file) != bool(self.target_file):
                raise ValueError("--source_file and --target_file go together")
        super().__post_init__()

    def _check_alignment_file(self) -> None:
        if not self.parallel:  # with --parallel: checked per language above
            super()._check_alignment_file()

    def for_language(self, corpus: LanguageCorpus, max_sentences: Optional[int]) -> AlignmentDataArguments:
        """The shared options with this corpus's languages, alignment file and sample size."""
        shared = {f.name: getattr(self, f.name) for f in fields(AlignmentDataArguments)}
        english_target = self.english_side == "target"
        shared.update(source_lang=corpus.lang if english_target else "en",
                      target_lang="en" if english_target else corpus.lang,
                      alignment_file=corpus.alignment_file, max_sentences=max_sentences)
        return AlignmentDataArguments(**shared)


def sample_sizes(args: AdjustDataArguments) -> List[Optional[int]]:
    """Sentences to sample per language: --max_sentences each, or (--sample_proportionally) that total
    split by `proportional_budget` over the pairs each corpus has within --max_words."""
    if not args.sample_proportionally:
        return [args.max_sentences] * len(args.corpora)
    from hf_xladjust.alignment.parallel import read_parallel

    sizes = []
    for c in args.corpora:  # one corpus in memory at a time; build_aligned_pairs reads it again
        corpus = read_parallel(c.source_file, c.target_file, c.train_file, skip_bad_lines=args.skip_bad_lines)
        sizes.append(len(alignable_indices(corpus, args.max_words)))
    counts = proportional_budget(sizes, args.max_sentences)
    for c, size, count in zip(args.corpora, sizes, counts):
        if count == 0:
            raise InputError(f"--sample_proportionally leaves {c.lang} no sentence of --max_sentences "
                             f"{args.max_sentences} ({size} of {sum(sizes)} pairs); raise --max_sentences",
                             c.train_file or c.source_file)
    return counts


def build_multilingual_pairs(args: AdjustDataArguments, seed: int = 42,
                             cache_dir: Optional[str] = None) -> Tuple[List[AlignedPair], Dict]:
    """Each --parallel corpus through `build_aligned_pairs` with the run's seed, its pairs tagged with
    the language and pooled in --parallel order. Statistics: per language, and the totals."""
    for corpus in args.corpora:  # before aligning anything: a wrong path of the last language fails at once
        for path in (corpus.source_file, corpus.target_file, corpus.train_file, corpus.alignment_file):
            if path and not os.path.isfile(path):
                raise InputError(f"no such file (--parallel {corpus.lang})", path)
    pairs, by_language = [], {}
    for corpus, k in zip(args.corpora, sample_sizes(args)):
        lang_pairs, stats = build_aligned_pairs(args.for_language(corpus, k), corpus.source_file,
                                                corpus.target_file, corpus.train_file, seed=seed,
                                                cache_dir=cache_dir)
        for p in lang_pairs:
            p.lang = corpus.lang
        pairs += lang_pairs
        by_language[corpus.lang] = stats
    totals = {key: sum(s[key] for s in by_language.values()) for key in ("sentences_kept", "links_kept")}
    return pairs, {"languages": by_language, **totals,
                   "sampling": "proportional" if args.sample_proportionally else "per_language",
                   "english_side": "target" if args.english_is_target else "source"}


def adjust_input_files(args) -> List[InputPath]:
    """The files run_adjust.py (and the transform fit) read: the corpus, or every --parallel corpus, and with
    --aligner pharaoh the alignment files. `args`: the parsed arguments as one namespace (the grid's dry run
    passes the parser's own, so a malformed --parallel value is a ValueError here)."""
    pharaoh = args.aligner == "pharaoh"
    if getattr(args, "parallel", None):
        inputs = []
        for c in parse_parallel(args.parallel, getattr(args, "alignment_files", None)):
            inputs += [InputPath(f"--parallel {c.lang}", path) for path in (c.source_file, c.target_file, c.train_file)
                       if path]
            if pharaoh and c.alignment_file:
                inputs.append(InputPath(f"--alignment_files {c.lang}", c.alignment_file))
        return inputs
    inputs = [InputPath(f"--{name}", getattr(args, name)) for name in ("source_file", "target_file", "train_file")
              if getattr(args, name, None)]
    if pharaoh and args.alignment_file:
        inputs.append(InputPath("--alignment_file", args.alignment_file))
    return inputs


def links_trained_by_language(dataset) -> Dict[str, int]:
    """Word links (not CLS/SEP) left per language in an `AlignedPairDataset` after truncation."""
    counts: Dict[str, int] = {}
    for pair, feature in zip(dataset.pairs, dataset.features):
        words = len(feature["links"]) - int(feature["link_is_special"].sum())
        counts[pair.lang] = counts.get(pair.lang, 0) + words
    return counts
