"""Words -> subwords from the running text, and the pad-token fallback: what every tokenizer family needs.

A sentence of words (the aligner's, or a tagged corpus's) is tokenised as the model sees it in use: its
words joined by single spaces, as one string. `is_split_into_words=True` would tokenise each word on its
own, which for byte-level BPE without a prefix space (GPT-2/RoBERTa family, ModernBERT, Llama, Qwen2) and
for SentencePiece conversions with `prepend_scheme "first"` drops the leading-space marker of every word
but the first: those ids never occur in running text. Each subword goes to the word whose characters it
covers (its character offsets, `return_offsets_mapping=True`); the space before a word counts as that
word's, so `Ġworld` (offsets including the space, `trim_offsets` false) and a lone `▁` go to the word
that follows. The tokens the tokenizer adds itself (CLS/SEP, BOS/EOS, or none) are read from its
output: its special-tokens mask on a token that covers no character; no special-token string is assumed.
"""
import logging
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from hf_xladjust.errors import InputError

logger = logging.getLogger(__name__)


def require_fast(tokenizer, what: str = "words -> subwords") -> None:
    """A slow (Python) tokenizer has no character offsets: one line, not a traceback later."""
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"{what} needs a fast tokenizer (character offsets); "
                         f"{type(tokenizer).__name__} is a slow one (drop --use_fast_tokenizer false, or convert "
                         "it with the tokenizers library)")


def ensure_pad_token(tokenizer, config=None, refuse: bool = False):
    """Give a tokenizer without a pad token its eos (or else its unk) token as pad, with one log line, and
    set `config.pad_token_id` (sequence-classification heads of decoders find each row's last token with
    it). `refuse=True`, or no eos/unk to fall back on: `InputError`, one line. Returns the tokenizer."""
    if tokenizer.pad_token_id is None:
        fallback = next((name for name in ("eos_token", "unk_token") if getattr(tokenizer, name, None) is not None
                         and getattr(tokenizer, f"{name}_id", None) is not None), None)
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        if refuse or fallback is None:
            raise InputError("the tokenizer has no pad token" + ("" if refuse else " and no eos/unk token to pad "
                             "with") + "; set one (tokenizer.pad_token) and save it with the model", name)
        tokenizer.pad_token = getattr(tokenizer, fallback)
        logger.warning("The tokenizer of %s has no pad token: padding with its %s %r (id %d)", name, fallback,
                       tokenizer.pad_token, tokenizer.pad_token_id)
    if config is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    return tokenizer


def running_text(words: Sequence[str]) -> str:
    """The sentence the model sees: its words joined by single spaces."""
    return " ".join(words)


@dataclass
class RunningTextEncoding:
    """Sentences of words tokenised as running text, with overflow rows (past `max_length`).

    `encoding` is the tokenizer's output (one row per kept sentence part, `overflow_to_sample_mapping`
    when truncating); `token_word[r]` holds, per token of row r, the index of the word it belongs to, -1
    for the tokens the tokenizer added (and padding); `added[r]` marks those added tokens.
    `first_row[i]` is sentence i's kept row, `end_row[i]` one past its last overflow row."""

    encoding: object
    token_word: List[np.ndarray]
    added: List[np.ndarray]
    first_row: np.ndarray
    end_row: np.ndarray

    def row(self, i: int) -> int:
        return int(self.first_row[i])

    def cut_word(self, i: int) -> Optional[int]:
        """The word sentence i's truncation cuts in two (its first subwords kept, the rest in the overflow
        row), or None. Only a word that also has subwords in the kept row is reported."""
        r = self.row(i)
        if self.end_row[i] - r < 2:
            return None
        overflow = self.token_word[r + 1]
        first = overflow[overflow >= 0]
        if not len(first):
            return None
        return int(first[0]) if (self.token_word[r] == first[0]).any() else None

    def words_past_limit(self, i: int) -> np.ndarray:
        """Words with subwords only in the overflow rows of sentence i (cut off entirely)."""
        kept = self.token_word[self.row(i)]
        rest = np.concatenate([self.token_word[r] for r in range(self.row(i) + 1, int(self.end_row[i]))] or
                              [np.zeros(0, np.int64)])
        return np.setdiff1d(rest[rest >= 0], kept[kept >= 0])


def _token_words(offsets: np.ndarray, special: np.ndarray, row_sample: np.ndarray,
                 sentences: Sequence[Sequence[str]]) -> np.ndarray:
    """Word index of every token of every row at once (one searchsorted over the whole batch).

    Each word owns its characters and the space before it; a token goes to the word that owns its first
    character (an empty, non-added token: the word at its position)."""
    lengths = [np.fromiter(map(len, words), dtype=np.int64, count=len(words)) for words in sentences]
    n_words = np.array([len(w) for w in lengths], dtype=np.int64)
    text_len = np.array([w.sum() + max(len(w) - 1, 0) for w in lengths], dtype=np.int64)
    text_base = np.concatenate([[0], np.cumsum(text_len + 1)[:-1]])  # each text in one global string
    word_base = np.concatenate([[0], np.cumsum(n_words)[:-1]])
    all_len = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    sentence_of_word = np.repeat(np.arange(len(sentences)), n_words)
    # word k of a sentence starts after the earlier words and k spaces; it owns from the space before it
    before = np.cumsum(all_len + 1) - (all_len + 1)
    per_sentence = np.array([w.sum() + len(w) for w in lengths], dtype=np.int64)
    local_start = before - np.repeat(np.concatenate([[0], np.cumsum(per_sentence)[:-1]]), n_words)
    owned_from = text_base[sentence_of_word] + np.maximum(local_start - 1, 0)
    token_char = text_base[row_sample] + offsets[:, 0]
    word = np.searchsorted(owned_from, token_char, side="right") - 1
    local = word - word_base[row_sample]
    ok = (~special) & (word >= 0) & (local >= 0) & (local < n_words[row_sample])
    return np.where(ok, local, -1)


def tokenize_running_text(tokenizer, sentences: Sequence[Sequence[str]], max_length: Optional[int] = None,
                          truncation: bool = True, padding=False, **kwargs) -> RunningTextEncoding:
    """Tokenise each sentence as `" ".join(words)` (with overflow rows when truncating) and map every token
    to its word; see the module docstring. Extra keyword arguments go to the tokenizer call."""
    require_fast(tokenizer)
    sentences = [list(words) for words in sentences]
    texts = [running_text(words) for words in sentences]
    overflow = dict(return_overflowing_tokens=True, stride=0) if truncation else {}
    enc = tokenizer(texts, truncation=truncation, max_length=max_length if truncation else None, padding=padding,
                    return_offsets_mapping=True, return_special_tokens_mask=True, **overflow, **kwargs)
    n_rows = len(enc["input_ids"])
    mapping = np.asarray(enc["overflow_to_sample_mapping"] if truncation else np.arange(n_rows), dtype=np.int64)
    row_len = np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)
    row_sample = np.repeat(mapping, row_len)
    offsets = np.array([o for row in enc["offset_mapping"] for o in row], dtype=np.int64).reshape(-1, 2)
    mask = np.array([m for row in enc["special_tokens_mask"] for m in row], dtype=bool)
    added = mask & (offsets[:, 0] == offsets[:, 1])  # a special token found in the text covers characters
    words = _token_words(offsets, added, row_sample, sentences)
    cuts = np.cumsum(row_len)[:-1]
    first_row = np.flatnonzero(np.r_[True, mapping[1:] != mapping[:-1]]) if n_rows else np.zeros(0, np.int64)
    end_row = np.r_[first_row[1:], n_rows].astype(np.int64)
    if len(first_row) != len(sentences):
        raise ValueError(f"{len(sentences)} sentences but {len(first_row)} encoded")
    return RunningTextEncoding(enc, np.split(words, cuts), np.split(added, cuts), first_row, end_row)
