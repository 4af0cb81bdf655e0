"""WikiANN NER for zero-shot transfer: XTREME tsv files and Hub splits, first-subword label alignment,
truncated-word accounting, and predictions back at the word level.

Every gold word is scored. A word with no subword in the model's input (cut off by `max_length`, or
one the tokenizer turns into nothing) gets no logit; it is predicted `O` and counted
(`truncated_words`, `untokenized_words`), so that scores of models with different tokenizers or
maximum lengths are computed over the same words.
"""
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from hf_xladjust.errors import InputError
from hf_xladjust.files import read_text_lines, write_jsonl
from hf_xladjust.hub_data import canonical_dataset_id, load_hub_split
from hf_xladjust.tasks.labels import match_model_labels
from hf_xladjust.tokenization import tokenize_running_text

# The tags of unimelb-nlp/wikiann (and of google/xtreme's PAN-X), in their ClassLabel order.
LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
OUTSIDE = "O"
_LANG_PREFIX = re.compile(r"^([a-z]{2,3}(?:-[A-Za-z]+)?):(?=.)")


@dataclass
class NERExample:
    """One sentence. `id` is its 0-based position in its source; `tags` are None for an unlabelled
    sentence; `line` is the 1-based line of its first word in a file, if any."""

    id: int
    tokens: List[str]
    tags: Optional[List[str]]
    line: Optional[int] = None


def read_ner_tsv(path: str, label_names: Sequence[str] = LABELS, lang: Optional[str] = None) -> List[NERExample]:
    """Read an XTREME-format NER file: one `token<TAB>tag` line per word, a blank line between
    sentences. A file whose lines have no tag column (XTREME's unlabelled test files) gives sentences
    with `tags=None`. Tokens prefixed with a language code (`en:Paris`, as in XTREME's PAN-X copies)
    are accepted when every token of the file carries the same prefix; it is removed (and must be
    `lang` when that is given).

    Raises `InputError` naming the file and line for: a line with more than two fields, an empty
    token or tag, a tag outside `label_names`, lines with and without tags in one file, undecodable
    UTF-8, and a file without any sentence."""
    labels = set(label_names)
    examples: List[NERExample] = []
    tokens: List[str] = []
    tags: List[str] = []
    first_line = None
    labelled = None

    def close():
        nonlocal tokens, tags, first_line
        if tokens:
            examples.append(NERExample(len(examples), tokens, tags if labelled else None, first_line))
        tokens, tags, first_line = [], [], None

    for line_no, text in read_text_lines(path):
        if not text.strip():
            close()
            continue
        fields = text.split("\t")
        if len(fields) > 2:
            raise InputError(f"expected token<TAB>tag (or a token alone), got {len(fields)} fields", path, line_no)
        has_tag = len(fields) == 2
        if labelled is None:
            labelled = has_tag
        elif has_tag != labelled:
            raise InputError("a line without a tag in a labelled file" if labelled
                             else "a tagged line in a file whose first line has no tag", path, line_no)
        token = fields[0]
        if not token.strip():
            raise InputError("empty token", path, line_no)
        if has_tag:
            tag = fields[1].strip()
            if not tag:
                raise InputError("empty tag", path, line_no)
            if tag not in labels:
                raise InputError(f"unknown tag {tag!r}; expected one of {', '.join(label_names)}", path, line_no)
            tags.append(tag)
        if first_line is None:
            first_line = line_no
        tokens.append(token)
    close()
    if not examples:
        raise InputError("no sentences (the file is empty)", path)
    _strip_language_prefix(examples, path, lang)
    return examples


def _strip_language_prefix(examples: List[NERExample], path: str, lang: Optional[str]) -> None:
    """Remove an `xx:` prefix that every token of the file carries (XTREME's PAN-X copies)."""
    first = _LANG_PREFIX.match(examples[0].tokens[0])
    if first is None:
        return
    prefix = first.group(0)
    if not all(t.startswith(prefix) and len(t) > len(prefix) for ex in examples for t in ex.tokens):
        return  # a token that merely looks like `xx:...`: the file is not prefixed
    if lang is not None and first.group(1) != lang:
        raise InputError(f"the tokens carry the language prefix {prefix!r}, but the file is read as {lang!r}",
                         path, examples[0].line)
    for ex in examples:
        ex.tokens = [t[len(prefix):] for t in ex.tokens]


def examples_from_hub(dataset, source: str, label_names: Sequence[str] = LABELS) -> List[NERExample]:
    """Sentences of one split of a Hub NER dataset with `tokens` and `ner_tags` (a sequence of
    ClassLabel, as unimelb-nlp/wikiann, or of tag strings); tags are translated by name. `source` names the
    split in error messages."""
    missing = {"tokens", "ner_tags"} - set(dataset.column_names)
    if missing:
        raise InputError(f"missing column(s) {sorted(missing)}; found {dataset.column_names}", source)
    feature = getattr(dataset.features["ner_tags"], "feature", None)
    names = getattr(feature, "names", None)
    labels = set(label_names)
    if names is not None:
        unknown = [n for n in names if n not in labels]
        if unknown:
            raise InputError(f"unknown tag(s) {unknown}; expected {', '.join(label_names)}", source)
    examples = []
    for i, (tokens, tags) in enumerate(zip(dataset["tokens"], dataset["ner_tags"])):
        if not tokens:
            raise InputError(f"example {i} has no tokens", source)
        if len(tags) != len(tokens):
            raise InputError(f"example {i} has {len(tokens)} tokens but {len(tags)} tags", source)
        if names is not None:
            if any(t < 0 for t in tags):  # unlabelled (-1)
                tags = None
            else:
                tags = [names[t] for t in tags]
        elif any(t not in labels for t in tags):
            raise InputError(f"example {i}: unknown tag(s) {sorted(set(tags) - labels)}", source)
        examples.append(NERExample(i, list(tokens), tags))
    if not examples:
        raise InputError("no examples", source)
    if len({ex.tags is None for ex in examples}) > 1:
        raise InputError("some examples have tags and others none", source)
    return examples


def load_ner_examples(file: Optional[str] = None, dataset_name: Optional[str] = None,
                      language: Optional[str] = None, split: Optional[str] = None,
                      max_samples: Optional[int] = None, label_names: Sequence[str] = LABELS,
                      config_pattern: str = "{lang}", **hub_kwargs) -> Tuple[List[NERExample], str]:
    """Sentences of one language and split, from an XTREME tsv `file` or else from the Hub dataset
    `dataset_name` (config `config_pattern` with `{lang}` = `language`, e.g. `PAN-X.{lang}` for
    google/xtreme; split `split`; `hub_kwargs` go to `datasets.load_dataset`).
    Keeps the first `max_samples`. Returns `(examples, source)`, `source` naming it for messages."""
    if file:
        examples, source = read_ner_tsv(file, label_names, language), file
    elif dataset_name:
        # unimelb-nlp/wikiann config `{lang}` and google/xtreme config `PAN-X.{lang}` (train, validation, test):
        # tokens, ner_tags ClassLabel O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC; tags are matched by name.
        # https://huggingface.co/datasets/unimelb-nlp/wikiann, https://huggingface.co/datasets/google/xtreme
        dataset_name = canonical_dataset_id(dataset_name)
        config = config_pattern.format(lang=language)
        source = f"{dataset_name}[{config}]:{split}"
        examples = examples_from_hub(load_hub_split(dataset_name, config, split, **hub_kwargs), source, label_names)
    else:
        raise ValueError(f"no data for language {language!r}, split {split!r}: give a file or a dataset name")
    if max_samples is not None:
        examples = examples[:max_samples]
    return examples, source


def is_labelled(examples: Sequence[NERExample]) -> bool:
    return all(ex.tags is not None for ex in examples)


def model_label_ids(config, label_names: Sequence[str] = LABELS, source: Optional[str] = None) -> Dict[str, int]:
    """Match the data's tags to a model config; returns tag -> the model's label id.

    A config without label names (a bare encoder, or a head with `LABEL_i` names) gets ours, in
    order, with `id2label`/`label2id` set so that they are saved with the fine-tuned model. A
    config with names (an already fine-tuned tagger) keeps its own ids, but its set of tags must be
    the data's; otherwise `InputError` naming the model."""
    return match_model_labels(config, tuple(label_names), "TokenClassification", source)


def b_to_i_ids(label_to_id: Dict[str, int]) -> Dict[int, int]:
    """Model id of `B-X` -> model id of `I-X` (when both exist); every other id maps to itself. With
    `--label_all_tokens`, a word's continuation subwords get the I- tag, as upstream run_ner.py."""
    mapping = {i: i for i in label_to_id.values()}
    for name, i in label_to_id.items():
        if name.startswith("B-") and f"I-{name[2:]}" in label_to_id:
            mapping[i] = label_to_id[f"I-{name[2:]}"]
    return mapping


def encode_examples(tokenizer, tokens: Sequence[Sequence[str]], tags: Optional[Sequence[Sequence[str]]],
                    label_to_id: Optional[Dict[str, int]], max_length: int, label_all_tokens: bool = False,
                    padding=False) -> Dict[str, list]:
    """Tokenise sentences of words as running text (`hf_xladjust.tokenization`: the ids the model sees on
    `tokenizer(" ".join(words))`, each subword given to the word whose characters it covers) and align the tags.

    `labels` (only when `tags` are given): the word's model label id on its first subword; on its
    other subwords -100, or with `label_all_tokens` the word's label (B-X turned into I-X); -100 on
    special tokens and padding. `word_index`: the word's index on its first subword, -1 elsewhere
    (to map predictions back to words). `truncated_words`: words with subwords, all of them beyond
    `max_length`; `untokenized_words`: words the tokenizer turns into no subword at all."""
    # One pass: the overflow rows of a sentence hold the subwords past `max_length` (as for aligned pairs).
    enc = tokenize_running_text(tokenizer, tokens, max_length, padding=padding)
    b_to_i = b_to_i_ids(label_to_id) if label_to_id is not None else None
    if b_to_i is not None:
        to_i = np.arange(max(b_to_i) + 1)
        to_i[list(b_to_i)] = list(b_to_i.values())
    word_index, labels, truncated, untokenized = [], [], [], []
    for i, words in enumerate(tokens):
        w = enc.token_word[enc.row(i)]
        past = enc.words_past_limit(i)
        truncated.append(len(past))
        untokenized.append(len(words) - len(np.unique(w[w >= 0])) - len(past))
        first = (w >= 0) & (w != np.r_[-1, w[:-1]])
        word_index.append(np.where(first, w, -1).tolist())
        if tags is not None:
            gold = np.array([label_to_id[t] for t in tags[i]] + [0], dtype=np.int64)[np.maximum(w, 0)]
            rest = to_i[gold] if label_all_tokens else np.full_like(gold, -100)
            labels.append(np.where(w < 0, -100, np.where(first, gold, rest)).tolist())
    dropped = ("overflow_to_sample_mapping", "offset_mapping", "special_tokens_mask")
    result = {key: [values[r] for r in enc.first_row] for key, values in enc.encoding.items() if key not in dropped}
    result["word_index"] = word_index
    result["truncated_words"] = truncated
    result["untokenized_words"] = untokenized
    if tags is not None:
        result["labels"] = labels
    return result


def word_predictions(pred_ids: np.ndarray, word_index: Sequence[Sequence[int]], n_words: Sequence[int],
                     fill_id: int) -> List[np.ndarray]:
    """Per sentence, one predicted label id per word: the prediction at the word's first subword
    (`word_index[i][t]` is the word of position t, -1 where none starts), `fill_id` (the id of `O`)
    for words without a subword. `pred_ids` is (sentences, positions), positions at least as many as
    the longest `word_index` row (the Trainer's padded argmax)."""
    n = len(word_index)
    lengths = np.fromiter((len(r) for r in word_index), dtype=np.int64, count=n)
    if pred_ids.shape[0] != n or (n and pred_ids.shape[1] < lengths.max()):
        raise ValueError(f"predictions of shape {pred_ids.shape} for {n} sentences of up to "
                         f"{lengths.max() if n else 0} positions")
    flat = np.concatenate([np.asarray(r, dtype=np.int64) for r in word_index]) if n else np.zeros(0, np.int64)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(flat.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    n_words = np.asarray(n_words, dtype=np.int64)
    out = np.full((n, int(n_words.max()) if n else 0), fill_id, dtype=np.int64)
    keep = flat >= 0
    out[rows[keep], flat[keep]] = pred_ids[rows[keep], cols[keep]]
    return [out[i, :n_words[i]] for i in range(n)]


def write_predictions(path: str, examples: Sequence[NERExample], preds: Sequence[Sequence[str]],
                      truncated_words: Optional[Sequence[int]] = None) -> None:
    """One JSON line per sentence: `id`, `tokens`, `gold` (tags, null for an unlabelled set), `pred`
    (tags) and `truncated_words` (how many of its words were cut off and predicted `O`)."""
    if len(preds) != len(examples):
        raise ValueError(f"{len(preds)} predictions for {len(examples)} sentences")
    records = []
    for i, (ex, pred) in enumerate(zip(examples, preds)):
        if len(pred) != len(ex.tokens):
            raise ValueError(f"sentence {ex.id}: {len(pred)} predicted tags for {len(ex.tokens)} words")
        record = {"id": ex.id, "tokens": ex.tokens, "gold": ex.tags, "pred": list(pred)}
        if truncated_words is not None:
            record["truncated_words"] = int(truncated_words[i])
        records.append(record)
    write_jsonl(path, records)
