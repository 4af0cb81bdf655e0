"""Aligned sentence pairs: link filters, the `aligned_pairs.jsonl` file, and tensors for the loss.

A sentence pair is tokenised once, when the dataset is built; each token then carries the index of
the *slot* (word, or special token) it belongs to. The collator only pads and offsets slot indices,
so the model side can pool subwords into words with one scatter over the whole batch.
"""
import json
import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from hf_xladjust.errors import InputError
from hf_xladjust.files import write_jsonl
from hf_xladjust.tokenization import require_fast, tokenize_running_text

logger = logging.getLogger(__name__)

Links = List[Tuple[int, int]]


@dataclass
class AlignmentDataArguments:
    """How a parallel corpus becomes aligned word pairs (shared by run_adjust.py and the continual mode)."""

    source_lang: Optional[str] = field(
        default=None,
        metadata={"help": "Language of the source side (the first file, or left of '|||'). Default: en, unless "
                          "--target_lang is en (then the source is the other language)."},
    )
    target_lang: Optional[str] = field(
        default=None, metadata={"help": "Language of the target side (es, ru, vi, hi, ...; en for `xx ||| en` files)."}
    )
    english_side: Optional[str] = field(
        default=None,
        metadata={"help": "Which side of the corpus is English, the side the anchor keeps near f0: source or "
                          "target. Default: target when --target_lang is en (the paper's 'xx ||| en' files), "
                          "else source. aligned_pairs.jsonl always has English as 'src'."},
    )
    aligner: str = field(
        default="eflomal",
        metadata={"help": "Word aligner: eflomal (default), fast_align (the paper's; extra 'fast_align'), or "
                          "pharaoh (read --alignment_file)."},
    )
    alignment_file: Optional[str] = field(
        default=None, metadata={"help": "Precomputed Pharaoh 'i-j' alignments, one line per sentence pair."}
    )
    symmetrization: Optional[str] = field(
        default=None,
        metadata={"help": "intersect (the paper; the default for eflomal), union or grow-diag-final-and (the "
                          "only one the fast_align binding returns, and its default)."},
    )
    max_sentences: Optional[int] = field(
        default=30000, metadata={"help": "Sentence pairs sampled (with the run's seed) from the corpus; paper: 30K."}
    )
    max_words: Optional[int] = field(
        default=64, metadata={"help": "Drop sentence pairs with more words on either side (paper's code: 64)."}
    )
    one_to_one: bool = field(default=True, metadata={"help": "Keep only 1-to-1 links (paper's code)."})
    drop_identical: bool = field(
        default=True, metadata={"help": "Drop links whose two words are the same string (paper's code)."}
    )
    drop_unlinked: bool = field(default=True, metadata={"help": "Drop sentence pairs left with no link."})
    link_special_tokens: bool = field(
        default=True,
        metadata={"help": "Also pull CLS<->CLS and SEP<->SEP together (on in the paper's runs, --include_clssep)."},
    )
    align_max_length: Optional[int] = field(
        default=None, metadata={"help": "Subword limit per sentence (default: the model's); words past it drop out."}
    )
    skip_bad_lines: bool = field(
        default=False, metadata={"help": "Skip (and count) empty or undecodable corpus lines instead of failing."}
    )

    def __post_init__(self):
        if self.english_side not in (None, "source", "target"):
            raise ValueError(f"--english_side must be source or target, got {self.english_side!r}")
        if self.source_lang and self.target_lang and self.source_lang == self.target_lang:
            raise ValueError(f"--source_lang and --target_lang are both {self.source_lang!r}")
        self._check_alignment_file()
        derived = self._english_side_from_languages()
        if self.english_side and derived and self.english_side != derived:
            raise ValueError(f"--english_side {self.english_side} contradicts --source_lang {self.source_lang} "
                             f"--target_lang {self.target_lang}")

    def _check_alignment_file(self) -> None:
        # A hook: run_adjust.py's --parallel takes one alignment file per language instead.
        if self.aligner == "pharaoh" and not self.alignment_file:
            raise ValueError("--aligner pharaoh needs --alignment_file (one line of i-j links per sentence pair)")

    def _english_side_from_languages(self) -> Optional[str]:
        # Only languages given explicitly say anything (an unset --source_lang is English only by default).
        if self.target_lang == "en":
            return "target"
        return "source" if self.source_lang == "en" else None

    @property
    def english_is_target(self) -> bool:
        """Whether the corpus has English on its target side (swapped to `src` when read)."""
        return (self.english_side or self._english_side_from_languages() or "source") == "target"


@dataclass
class AlignedPair:
    src: List[str]
    tgt: List[str]
    links: Links
    lang: Optional[str] = None  # the non-English language, recorded when several are pooled (--parallel)


def filter_links(src: Sequence[str], tgt: Sequence[str], links: Links, one_to_one=True, drop_identical=True,
                 counts: Optional[Dict[str, int]] = None) -> Links:
    """Apply the paper's link filters to one sentence pair; `counts` collects how many links each removes."""
    counts = counts if counts is not None else {}
    kept = sorted(set(links))
    if one_to_one:
        src_deg, tgt_deg = {}, {}
        for i, j in kept:
            src_deg[i] = src_deg.get(i, 0) + 1
            tgt_deg[j] = tgt_deg.get(j, 0) + 1
        one = [(i, j) for i, j in kept if src_deg[i] == 1 and tgt_deg[j] == 1]
        counts["links_not_one_to_one"] = counts.get("links_not_one_to_one", 0) + len(kept) - len(one)
        kept = one
    if drop_identical:
        different = [(i, j) for i, j in kept if src[i] != tgt[j]]
        counts["links_identical_words"] = counts.get("links_identical_words", 0) + len(kept) - len(different)
        kept = different
    return kept


def filter_pairs(src_sents, tgt_sents, links, args: AlignmentDataArguments) -> Tuple[List[AlignedPair], Dict]:
    """Turn aligned sentences into the training pairs and the statistics of what each filter removed."""
    counts = {"sentences_read": len(src_sents), "sentences_too_long": 0, "sentences_without_links": 0,
              "links_read": sum(len(ln) for ln in links), "links_not_one_to_one": 0, "links_identical_words": 0}
    pairs = []
    for src, tgt, sent_links in zip(src_sents, tgt_sents, links):
        if args.max_words and (len(src) > args.max_words or len(tgt) > args.max_words):
            counts["sentences_too_long"] += 1
            continue
        kept = filter_links(src, tgt, sent_links, args.one_to_one, args.drop_identical, counts)
        if not kept and args.drop_unlinked:
            counts["sentences_without_links"] += 1
            continue
        pairs.append(AlignedPair(list(src), list(tgt), kept))
    counts["sentences_kept"] = len(pairs)
    counts["links_kept"] = sum(len(p.links) for p in pairs)
    return pairs, counts


def alignable_indices(corpus, max_words: Optional[int]) -> List[int]:
    """Positions of the pairs with at most `max_words` words on each side: what the sample is drawn from."""
    return [k for k, (s, t) in enumerate(zip(corpus.src, corpus.tgt))
            if not max_words or (len(s) <= max_words and len(t) <= max_words)]


def build_aligned_pairs(args: Optional[AlignmentDataArguments] = None, source_file=None, target_file=None,
                        train_file=None, seed: int = 42, cache_dir: Optional[str] = None,
                        dataset=None) -> Tuple[List[AlignedPair], Dict]:
    """Read a parallel corpus (files, or `dataset`, a `TranslationDataset`, read in the languages
    --source_lang/--target_lang name), drop pairs over `max_words` words from the whole corpus, sample
    `max_sentences` of the rest, word-align them (or read --alignment_file) and filter the links: the
    order of the paper's code. The returned pairs have English as `src` (see `english_side`).
    `args` None: `AlignmentDataArguments()`, the scripts' defaults."""
    args = args if args is not None else AlignmentDataArguments()
    from hf_xladjust.alignment.aligners import align_corpus
    from hf_xladjust.alignment.parallel import read_parallel, sample_corpus

    if dataset is not None:
        corpus = dataset.read(args.source_lang, args.target_lang, skip_bad_lines=args.skip_bad_lines)
    else:
        corpus = read_parallel(source_file, target_file, train_file, skip_bad_lines=args.skip_bad_lines)
    short = alignable_indices(corpus, args.max_words)
    too_long = len(corpus) - len(short)
    if not short:
        raise InputError(f"every sentence pair has more than {args.max_words} words on a side (--max_words)",
                         corpus.source_path)
    sample = sample_corpus(corpus.subset(short) if too_long else corpus, args.max_sentences, seed)
    if args.aligner == "pharaoh":
        # A precomputed file covers the whole corpus: read it all (checking every line), keep the sample's lines.
        links = align_corpus(corpus.src, corpus.tgt, "pharaoh", alignment_file=args.alignment_file)
        by_line = dict(zip(corpus.line_numbers, links))
        links = [by_line[n] for n in sample.line_numbers]
    else:
        default = "grow-diag-final-and" if args.aligner == "fast_align" else "intersect"
        symmetrization = args.symmetrization or default
        links = align_corpus(sample.src, sample.tgt, args.aligner, symmetrization, seed=seed,
                             cache_dir=cache_dir)
    src, tgt = sample.src, sample.tgt
    if args.english_is_target:  # English goes to `src`, the side the anchor term reads
        src, tgt = tgt, src
        links = [[(j, i) for i, j in sent_links] for sent_links in links]
    pairs, stats = filter_pairs(src, tgt, links, args)
    stats = {"lines_skipped": dict(corpus.skipped), "sentences_in_corpus": len(corpus),
             **stats, "sentences_too_long": too_long,
             "english_side": "target" if args.english_is_target else "source"}
    if not pairs:
        raise InputError("no sentence pair is left after alignment and filtering", corpus.source_path)
    return pairs, stats


def write_aligned_pairs(path: str, pairs: Sequence[AlignedPair]) -> None:
    """One JSON line per pair; `lang` only on pairs that carry one (pooled languages)."""
    write_jsonl(path, ({"src": p.src, "tgt": p.tgt, "links": [list(link) for link in p.links],
                        **({"lang": p.lang} if p.lang else {})} for p in pairs))


def read_aligned_pairs(path: str) -> List[AlignedPair]:
    """Read `aligned_pairs.jsonl` (as written by run_adjust.py), checking every link is in range."""
    pairs = []
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror})", path) from None
    with f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                raise InputError("empty line", path, line_no)
            try:
                rec = json.loads(line)
                src, tgt, links = rec["src"], rec["tgt"], [tuple(ln) for ln in rec["links"]]
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(f"not an aligned pair record ({e})", path, line_no) from None
            for i, j in links:
                if not (0 <= i < len(src) and 0 <= j < len(tgt)):
                    raise InputError(f"link {i}-{j} out of range for {len(src)} source / {len(tgt)} target words",
                                     path, line_no)
            pairs.append(AlignedPair(src, tgt, links, rec.get("lang")))
    if not pairs:
        raise InputError("no aligned pairs", path)
    return pairs


def _slot_encode(ids, token_word: np.ndarray, added: np.ndarray, cut_word: Optional[int], n_words: int):
    """Token ids and, per token, its slot: word slots first (in word order), then one slot per token the
    tokenizer added (CLS/SEP, BOS/EOS; none for a tokenizer that adds none). A word cut by truncation
    gets no slot (-1), so it drops out of links and anchor; so does a token of no word.

    Returns (input_ids, token_slot, slot_of_word (-1 for words without a slot), number of word slots)."""
    present = np.unique(token_word[token_word >= 0])
    if cut_word is not None:
        present = present[present != cut_word]
    slot_of_word = np.full(n_words, -1, dtype=np.int64)
    slot_of_word[present] = np.arange(len(present))
    token_slot = np.where(token_word >= 0, slot_of_word[np.maximum(token_word, 0)], -1)
    special_positions = np.flatnonzero(added)
    token_slot[special_positions] = len(present) + np.arange(len(special_positions))
    return list(ids), token_slot, slot_of_word, len(present)


class AlignedPairDataset(torch.utils.data.Dataset):
    """Aligned pairs tokenised once into slot-annotated features for `AlignedPairCollator`.

    Each sentence is tokenised as running text (`hf_xladjust.tokenization`): the model sees the ids of
    `tokenizer(" ".join(words))`, and each subword pools into the word whose characters it covers.
    Words the tokenizer truncates away drop out of the links and the anchor; nothing indexes past them.
    `special_tokens` are the tokens the tokenizer adds to a sentence (from its output; empty for one
    that adds none: then there are no special-token links)."""

    def __init__(self, pairs: Sequence[AlignedPair], tokenizer, max_length: Optional[int] = None,
                 link_special_tokens: bool = AlignmentDataArguments.link_special_tokens):  # the scripts' (True)
        require_fast(tokenizer, "aligned word pairs")
        max_length = max_length or tokenizer.model_max_length
        self.pairs = list(pairs)
        encoded = {side: tokenize_running_text(tokenizer, [getattr(p, side) for p in self.pairs], max_length)
                   for side in ("src", "tgt")}
        self.features, self.links_lost, self.special_links = [], 0, 0
        self.word_slots = {"src": [], "tgt": []}  # per pair: word index -> slot (-1: truncated away)
        self.special_tokens: List[str] = []
        for k, pair in enumerate(self.pairs):
            side_features = {}
            for side, enc in encoded.items():
                row = enc.row(k)
                side_features[side] = _slot_encode(enc.encoding["input_ids"][row], enc.token_word[row],
                                                   enc.added[row], enc.cut_word(k), len(getattr(pair, side)))
                self.word_slots[side].append(side_features[side][2])
            s_ids, s_slot, s_map, s_words = side_features["src"]
            t_ids, t_slot, t_map, t_words = side_features["tgt"]
            if k == 0:
                self.special_tokens = tokenizer.convert_ids_to_tokens(
                    [s_ids[i] for i in np.flatnonzero(encoded["src"].added[encoded["src"].row(0)])])
            links = np.array(pair.links, dtype=np.int64).reshape(-1, 2)
            slot_links = np.stack([s_map[links[:, 0]], t_map[links[:, 1]]], axis=1)
            keep = (slot_links >= 0).all(axis=1)
            self.links_lost += int((~keep).sum())
            slot_links = slot_links[keep]
            is_special = np.zeros(len(slot_links), dtype=bool)
            if link_special_tokens:  # CLS<->CLS, SEP<->SEP: the special slots follow the word slots
                s_special = np.arange(s_words, s_slot.max(initial=-1) + 1)
                t_special = np.arange(t_words, t_slot.max(initial=-1) + 1)
                if len(s_special) == len(t_special) and len(s_special):
                    slot_links = np.concatenate([slot_links, np.stack([s_special, t_special], axis=1)])
                    is_special = np.concatenate([is_special, np.ones(len(s_special), dtype=bool)])
                    self.special_links += len(s_special)
            self.features.append({
                "src_input_ids": s_ids, "src_token_slot": s_slot, "src_num_slots": int(s_slot.max(initial=-1)) + 1,
                "tgt_input_ids": t_ids, "tgt_token_slot": t_slot, "tgt_num_slots": int(t_slot.max(initial=-1)) + 1,
                "links": slot_links, "link_is_special": is_special,
            })
        if link_special_tokens and not self.special_tokens:
            logger.warning("The tokenizer adds no special tokens (no CLS/SEP or BOS/EOS): no special-token links")
        if self.links_lost:
            logger.warning("%d links dropped: their words were truncated at max_length=%d",
                           self.links_lost, max_length)

    def __len__(self):
        return len(self.features)

    def __getitem__(self, i):
        return self.features[i]


def _pad(seqs, value):
    out = torch.full((len(seqs), max(len(s) for s in seqs)), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


@dataclass
class AlignedPairCollator:
    """Pads a list of features and turns per-sentence slots into batch-global slot indices.

    Output keys: `{src,tgt}_input_ids`, `{src,tgt}_attention_mask`, `{src,tgt}_token_slot` (-1 on
    padding and on a word cut by truncation), `{src,tgt}_num_slots` (int),
    `src_link_slots`/`tgt_link_slots` (one entry per link), the sentence (row) each link and each
    source slot belongs to, `link_sentence` and `src_slot_sentence` (for per-sub-batch means), and
    `word_links`, the positions of the links between words, i.e. not CLS<->CLS or SEP<->SEP (for the
    contrastive objective; computed here so that the loss selects them without a host sync)."""

    pad_token_id: Optional[int]

    def __call__(self, features):
        # Padded positions are masked out of attention and of every slot: a tokenizer without a pad token
        # (hf_xladjust.tokenization.ensure_pad_token) pads with id 0 here rather than failing.
        pad_id = 0 if self.pad_token_id is None else self.pad_token_id
        batch = {}
        offsets = {}
        for side in ("src", "tgt"):
            counts = np.array([f[f"{side}_num_slots"] for f in features], dtype=np.int64)
            offsets[side] = np.concatenate([[0], np.cumsum(counts)[:-1]])
            ids = _pad([f[f"{side}_input_ids"] for f in features], pad_id)
            slots = _pad([np.where(f[f"{side}_token_slot"] >= 0, f[f"{side}_token_slot"] + off, -1)
                          for f, off in zip(features, offsets[side])], -1)
            lengths = torch.tensor([len(f[f"{side}_input_ids"]) for f in features])
            batch[f"{side}_input_ids"] = ids
            batch[f"{side}_attention_mask"] = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
            batch[f"{side}_token_slot"] = slots
            batch[f"{side}_num_slots"] = int(counts.sum())
        links = [f["links"] for f in features]
        batch["src_link_slots"] = torch.as_tensor(
            np.concatenate([ln[:, 0] + off for ln, off in zip(links, offsets["src"])]), dtype=torch.long)
        batch["tgt_link_slots"] = torch.as_tensor(
            np.concatenate([ln[:, 1] + off for ln, off in zip(links, offsets["tgt"])]), dtype=torch.long)
        rows = np.arange(len(features))
        batch["link_sentence"] = torch.as_tensor(np.repeat(rows, [len(ln) for ln in links]), dtype=torch.long)
        batch["src_slot_sentence"] = torch.as_tensor(
            np.repeat(rows, [f["src_num_slots"] for f in features]), dtype=torch.long)
        special = np.concatenate([f.get("link_is_special", np.zeros(len(f["links"]), dtype=bool)) for f in features])
        batch["word_links"] = torch.as_tensor(np.flatnonzero(~special), dtype=torch.long)
        return batch

