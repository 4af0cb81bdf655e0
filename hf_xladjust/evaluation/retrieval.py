"""Cross-lingual sentence retrieval (XSR, Tatoeba) at every layer of an encoder.

For line-parallel sentences (line i of the source side translates line i of the target side),
each source sentence is a query and every target sentence a candidate; the gold candidate is the
one on the same line. Sentence vectors are pooled token vectors of one layer, candidates are
ranked by cosine similarity, and MRR and accuracy@1 are reported for every hidden state (index 0 =
the embedding layer, L = the last layer), plus the best layer by MRR.

How it is computed (one code path for a standalone run and a call during training):

* tokenised once per tokenizer, without padding; batches are cut from the distinct sentences of
  both sides sorted by length (longest first), so padding is small and the largest batch comes
  first; a sentence that occurs twice is embedded once, so its copies tie exactly;
* ONE forward pass per batch with `output_hidden_states=True` gives every layer; pooling is a
  weighted sum over tokens (one small matrix product per layer), in fp32 (also under autocast);
* scores are cosine similarities of ALL candidates for each query: one batched matrix product over
  the layers (queries are chunked only to bound memory), in fp32, on the model's device;
* ties count against the gold candidate (see `gold_ranks`).

Pooling (`POOLINGS`): `mean` averages every non-padding token, special tokens ([CLS]/[SEP],
<s>/</s>) included: what the paper's code (pefimov/cross-lingual-adjustment,
retrieval/evaluate_retrieval.py) and XTREME (third_party/evaluate_retrieval.py) do by default
(their `--pool_skip_special_token` is off, and the paper's run script does not set it);
`mean_no_special` leaves the special tokens out (their `--pool_skip_special_token`); `cls` takes
the first token.
"""
import logging
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from hf_xladjust.alignment.loss import encoder_of
from hf_xladjust.errors import InputError
from hf_xladjust.evaluation.encoders import hf_model_and_tokenizer
from hf_xladjust.files import decode_line, read_lines
from hf_xladjust.precision import evaluation_autocast

logger = logging.getLogger(__name__)

POOLINGS = ("mean", "mean_no_special", "cls")
DIRECTIONS = ("forward", "reverse")

# Two-letter codes -> the three-letter codes of LASER's Tatoeba files (tatoeba.spa-eng.spa) and of the
# Hub's XTREME configs (tatoeba.spa): the 36 XTREME Tatoeba languages plus the paper code's additions.
TATOEBA_CODES = {
    "af": "afr", "ar": "ara", "az": "aze", "bg": "bul", "bn": "ben", "de": "deu", "el": "ell", "en": "eng",
    "es": "spa", "et": "est", "eu": "eus", "fa": "pes", "fi": "fin", "fr": "fra", "he": "heb", "hi": "hin",
    "hu": "hun", "id": "ind", "it": "ita", "ja": "jpn", "jv": "jav", "ka": "kat", "kk": "kaz", "ko": "kor",
    "lt": "lit", "ml": "mal", "mr": "mar", "nl": "nld", "pl": "pol", "pt": "por", "ro": "ron", "ru": "rus",
    "sw": "swh", "ta": "tam", "te": "tel", "th": "tha", "tl": "tgl", "tr": "tur", "uk": "ukr", "ur": "urd",
    "vi": "vie", "zh": "cmn",
}


def tatoeba_code(lang: str) -> str:
    """The three-letter Tatoeba code of `lang` (`es` -> `spa`); a three-letter code is kept as it is."""
    if lang in TATOEBA_CODES:
        return TATOEBA_CODES[lang]
    if len(lang) == 3 and lang.isalpha() and lang.islower():
        return lang
    raise ValueError(f"unknown language {lang!r}: give a code of {sorted(TATOEBA_CODES)} or a three-letter "
                     f"Tatoeba code (the xxx of tatoeba.xxx-eng.xxx)")


# ----------------------------------------------------------------------------- data
@dataclass
class ParallelSentences:
    """Line-parallel sentences: `targets[i]` translates `sources[i]`; `source`/`target` name where
    each side comes from (for messages and the run record)."""

    sources: List[str]
    targets: List[str]
    source: str
    target: str

    def __post_init__(self):
        if len(self.sources) != len(self.targets):
            raise ValueError(f"{len(self.sources)} source but {len(self.targets)} target sentences")

    def __len__(self) -> int:
        return len(self.sources)

    def head(self, n: Optional[int]) -> "ParallelSentences":
        """The first `n` pairs (all when `n` is None)."""
        if n is None or n >= len(self):
            return self
        return ParallelSentences(self.sources[:n], self.targets[:n], self.source, self.target)


def _check_sentences(lines: Sequence[str], where: str, side: str) -> List[str]:
    out = [line.strip() for line in lines]
    for i, line in enumerate(out):
        if not line:
            raise InputError(f"empty {side} sentence: every line must hold one sentence", where, i + 1)
    return out


def read_parallel_lines(source_file: str, target_file: str, encoding: str = "utf-8") -> ParallelSentences:
    """Two line-parallel text files, one sentence a line (surrounding whitespace is stripped).

    Unequal line counts, an empty line, an undecodable byte or an empty file raise InputError
    naming the file and line."""
    sides = []
    for path in (source_file, target_file):
        try:
            raw = read_lines(path)
        except FileNotFoundError:
            raise InputError("no such file", path) from None
        if not raw:
            raise InputError("the file has no sentences", path)
        sides.append([decode_line(line, path, i, encoding) for i, line in enumerate(raw, start=1)])
    (src, tgt), n = sides, min(len(s) for s in sides)
    if len(src) != len(tgt):
        longer = source_file if len(src) > len(tgt) else target_file
        shorter = target_file if longer == source_file else source_file
        raise InputError(f"the files are not line-parallel: {source_file} has {len(src)} lines but {target_file} has "
                         f"{len(tgt)}; {shorter} ends after line {n}, so this line has no counterpart", longer, n + 1)
    return ParallelSentences(_check_sentences(src, source_file, "source"),
                             _check_sentences(tgt, target_file, "target"), source_file, target_file)


def tatoeba_files(tatoeba_dir: str, lang: str) -> Tuple[str, str]:
    """LASER's file names for `lang`: (tatoeba.xxx-eng.xxx, tatoeba.xxx-eng.eng) in `tatoeba_dir`."""
    code = tatoeba_code(lang)
    stem = os.path.join(tatoeba_dir, f"tatoeba.{code}-eng")
    return f"{stem}.{code}", f"{stem}.eng"


def read_tatoeba(tatoeba_dir: str, lang: str) -> ParallelSentences:
    """The Tatoeba pairs of `lang` (queries in `lang`, English candidates) from LASER's files."""
    return read_parallel_lines(*tatoeba_files(tatoeba_dir, lang))


def tatoeba_from_hub(dataset_name: str, lang: str, config_pattern: str = "tatoeba.{lang3}",
                     split: str = "validation", source_column: str = "source_sentence",
                     target_column: str = "target_sentence", **hub_kwargs) -> ParallelSentences:
    """The Tatoeba pairs of `lang` from a Hub dataset. The defaults read XTREME's `google/xtreme`
    (config `tatoeba.spa`, split `validation`, `source_sentence` in the language and
    `target_sentence` in English, as the paper's code reads it); `{lang}` and `{lang3}` in
    `config_pattern` are the two- and three-letter codes (e.g. `{lang3}-eng` for
    `mteb/tatoeba-bitext-mining`, with split `test` and columns `sentence1`/`sentence2`)."""
    # google/xtreme tatoeba.{lang3}: split validation, source_sentence (the language), target_sentence (English):
    # https://huggingface.co/datasets/google/xtreme
    from hf_xladjust.hub_data import canonical_dataset_id, load_hub_split

    dataset_name = canonical_dataset_id(dataset_name)
    config = config_pattern.format(lang=lang, lang3=tatoeba_code(lang))
    where = f"{dataset_name}[{config}]:{split}"
    data = load_hub_split(dataset_name, config, split, **hub_kwargs)
    for column in (source_column, target_column):
        if column not in data.column_names:
            raise InputError(f"no column {column!r} (columns: {', '.join(data.column_names)})", where)
    if len(data) == 0:
        raise InputError("no sentence pairs", where)
    return ParallelSentences(_check_sentences(data[source_column], where + f" column {source_column}", "source"),
                             _check_sentences(data[target_column], where + f" column {target_column}", "target"),
                             f"{where}/{source_column}", f"{where}/{target_column}")


# ----------------------------------------------------------------------------- ranks and metrics
def gold_ranks(scores: torch.Tensor, gold: torch.Tensor, tolerance: float = 0.0) -> torch.Tensor:
    """The 1-based rank of each query's gold candidate; ties count against the gold.

    `scores`: (..., queries, candidates); `gold`: (queries,) candidate index per query. The rank is
    the number of candidates scoring at least as high as the gold one (less `tolerance`), the gold
    included: the pessimistic rank. A candidate tied with the gold is ranked above it, so a model
    that gives every sentence the same vector gets rank N, never rank 1, and acc@1 counts a query
    only when its gold candidate scores highest by more than `tolerance`."""
    index = gold.view(*([1] * (scores.dim() - 2)), -1, 1).expand(*scores.shape[:-1], 1)
    gold_score = scores.gather(-1, index)
    return (scores >= gold_score - tolerance).sum(dim=-1)


def retrieval_metrics(ranks: np.ndarray) -> Dict[str, np.ndarray]:
    """Per-layer MRR and acc@1 from (queries, layers) 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return {"mrr": (1.0 / ranks).mean(axis=0), "acc1": (ranks == 1).mean(axis=0)}


def best_layer(mrr: np.ndarray) -> int:
    """The layer with the highest MRR; the lowest index wins a tie."""
    return int(np.argmax(np.asarray(mrr, dtype=np.float64)))


# Cosines closer than this to the gold's count as ties: fp32 rounding (the same vector scored in another
# column of the matrix product, a vector and a multiple of it) moves a cosine by about 1e-7.
TIE_TOLERANCE = 1e-6


@torch.no_grad()
def rank_candidates(queries: torch.Tensor, candidates: torch.Tensor, gold: Optional[torch.Tensor] = None,
                    max_elements: int = 1 << 26, tie_tolerance: float = TIE_TOLERANCE
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cosine ranking of all candidates for every query, at every layer.

    `queries` (layers, Q, H) and `candidates` (layers, C, H) are sentence vectors; `gold` (Q,) the
    gold candidate of each query (default: query i -> candidate i). Returns, on the inputs' device,
    `ranks` (layers, Q), see `gold_ranks` (cosines within `tie_tolerance` of the gold's are ties),
    and `top` (layers, Q): the gold when it ranks first, otherwise the highest-scoring other
    candidate (lowest index among equals), i.e. a top-scoring candidate consistent with the ranks.
    Scores are fp32 (one batched matrix product over layers; queries in chunks of at most
    `max_elements` scores)."""
    layers, n_queries, _ = queries.shape
    if gold is None:
        if candidates.shape[1] != n_queries:
            raise ValueError(f"{n_queries} queries but {candidates.shape[1]} candidates: give `gold`")
        gold = torch.arange(n_queries, device=queries.device)
    q = F.normalize(queries.float(), dim=-1)
    c_t = F.normalize(candidates.float(), dim=-1).transpose(1, 2)
    chunk = max(1, max_elements // max(1, layers * candidates.shape[1]))
    ranks, top = [], []
    with torch.autocast(queries.device.type, enabled=False):
        for start in range(0, n_queries, chunk):
            g = gold[start:start + chunk]
            scores = torch.bmm(q[:, start:start + chunk], c_t)  # (layers, n, C)
            rank = gold_ranks(scores, g, tie_tolerance)
            scores.scatter_(-1, g.view(1, -1, 1).expand(layers, -1, 1), float("-inf"))
            other = scores.argmax(dim=-1)
            ranks.append(rank)
            top.append(torch.where(rank == 1, g.view(1, -1), other))
    return torch.cat(ranks, dim=1), torch.cat(top, dim=1)


# ----------------------------------------------------------------------------- embedding
class _Tokenized:
    """Sentences tokenised once: right-padded id and pooling-weight arrays to slice batches from
    (padding is ours, so position 0 is the first token whatever the tokenizer's padding side), and
    the length order that batches follow."""

    def __init__(self, texts: Sequence[str], tokenizer, max_length: int, pooling: str):
        enc = tokenizer(list(texts), add_special_tokens=True, truncation=True, max_length=max_length,
                        return_special_tokens_mask=True, return_attention_mask=False)
        ids, special = enc["input_ids"], enc["special_tokens_mask"]
        self.lengths = np.array([len(x) for x in ids], dtype=np.int64)
        if getattr(enc, "encodings", None):
            self.truncated = sum(bool(e.overflowing) for e in enc.encodings)
        else:
            self.truncated = int((self.lengths >= max_length).sum())
        width = int(self.lengths.max())
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
        self.attention_mask = np.zeros((len(ids), width), dtype=np.int64)
        self.pool_weight = np.zeros((len(ids), width), dtype=np.float32)
        for i, (row, spec) in enumerate(zip(ids, special)):
            n = len(row)
            self.input_ids[i, :n] = row
            self.attention_mask[i, :n] = 1
            if pooling == "mean":
                self.pool_weight[i, :n] = 1.0
            elif pooling == "mean_no_special":
                self.pool_weight[i, :n] = 1.0 - np.asarray(spec, dtype=np.float32)
            else:  # cls
                self.pool_weight[i, 0] = 1.0
        counts = self.pool_weight.sum(axis=1, keepdims=True)
        self.empty = int((counts[:, 0] == 0).sum())  # no token left to pool: the vector is zero
        self.pool_weight /= np.maximum(counts, 1.0)
        self.order = np.argsort(-self.lengths, kind="stable")


def pool_layers(hidden_states: Sequence[torch.Tensor], weight: torch.Tensor) -> torch.Tensor:
    """Sentence vectors of every layer in fp32: (layers, batch, hidden) = Σ_t weight[b, t]·h[l, b, t].

    One (batch, 1, tokens) x (batch, tokens, hidden) product per layer: no copy of the hidden states
    (in fp32), where stacking them first would copy every layer's activations."""
    with torch.autocast(weight.device.type, enabled=False):
        w = weight.float().unsqueeze(1)
        return torch.stack([torch.bmm(w, h.float()).squeeze(1) for h in hidden_states])


@dataclass
class RetrievalResult:
    """One retrieval direction: per query the gold rank and the top candidate at every layer
    ((queries, layers) numpy arrays), and the per-layer metrics."""

    name: str
    ranks: np.ndarray
    top: np.ndarray
    mrr: np.ndarray
    acc1: np.ndarray

    @property
    def best_layer(self) -> int:
        return best_layer(self.mrr)

    def metrics(self, prefix: str = "") -> Dict[str, float]:
        """`{prefix}{name}_mrr_layer{L}`, `_acc1_layer{L}` for every layer; `_best_layer`, `_mrr` and
        `_acc1` (at the best layer), `_queries`, `_layers`."""
        head = f"{prefix}{self.name}_"
        out: Dict[str, float] = {}
        for layer, (m, a) in enumerate(zip(self.mrr, self.acc1)):
            out[f"{head}mrr_layer{layer}"] = float(m)
            out[f"{head}acc1_layer{layer}"] = float(a)
        b = self.best_layer
        out.update({f"{head}best_layer": b, f"{head}mrr": float(self.mrr[b]), f"{head}acc1": float(self.acc1[b]),
                    f"{head}queries": int(self.ranks.shape[0]), f"{head}layers": int(self.ranks.shape[1])})
        return out

    def prediction_records(self, ids: Optional[Sequence] = None) -> Iterator[dict]:
        """Per query: `id`, `ranks` (gold rank at every layer, index 0 = embeddings), `gold` (the gold
        candidate's index) and `pred` (a top-scoring candidate at the best layer; == gold iff rank 1)."""
        b = self.best_layer
        ids = range(len(self.ranks)) if ids is None else ids
        for i, (qid, ranks, top) in enumerate(zip(ids, self.ranks.tolist(), self.top[:, b].tolist())):
            yield {"id": qid, "ranks": ranks, "gold": i, "pred": top}


class SentenceRetrievalEvaluator:
    """Sentence retrieval over all layers, shaped as a sentence-transformers evaluator: constructed
    with the data, called with a model (a bare encoder, a task model, whose base encoder is used, or a
    `SentenceTransformer`, whose transformer and tokenizer are used) and returns a dict of metrics.

    `sources[i]` and `targets[i]` are translations. Direction `forward` takes the sources as queries
    and ranks all targets (Tatoeba xx->en, the paper's and the default); `reverse` the other way.
    Results are named `name` (forward) and `reverse_name`; metrics are `{prefix}{name}_mrr_layer3`,
    `{prefix}{name}_mrr` (best layer), ... (see `RetrievalResult.metrics`). The last call's results,
    with per-query ranks for the prediction files, stay in `self.results` ({name: RetrievalResult}).

    `amp`: None, "fp16" or "bf16": the forward pass runs under autocast with that dtype; pooling and
    scores are fp32 in any case. The model runs on its own device, in eval mode, without gradients;
    its training mode is restored after.

    `source_transform` / `target_transform`: optional maps of one side's sentence vectors (layers, N, H)
    -> (layers, N, H), applied after pooling, before scoring (`--representation_transform`, see
    `hf_xladjust.evaluation.transforms`). A rotation is linear and a normalisation affine per dimension,
    and the pooling weights of a sentence sum to 1, so transforming the mean-pooled vector equals pooling
    the transformed token vectors; with `cls` pooling it is the one token's vector anyway."""

    primary_metric = "mrr"

    def __init__(self, sources: Sequence[str], targets: Sequence[str], tokenizer=None, *, name: str = "xsr",
                 reverse_name: Optional[str] = None, directions: Sequence[str] = ("forward",),
                 pooling: str = "mean", batch_size: int = 64, max_length: Optional[int] = 512,
                 amp: Optional[str] = None, prefix: str = "", max_score_elements: int = 1 << 26,
                 source_transform: Optional[Callable] = None, target_transform: Optional[Callable] = None):
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not directions or any(d not in DIRECTIONS for d in directions):
            raise ValueError(f"directions must be a non-empty subset of {DIRECTIONS}, got {directions!r}")
        if amp not in (None, "fp16", "bf16"):
            raise ValueError(f"amp must be None, 'fp16' or 'bf16', got {amp!r}")
        if len(sources) != len(targets) or not sources:
            raise ValueError(f"need as many target as source sentences, and some: {len(sources)} vs {len(targets)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sources, self.targets = list(sources), list(targets)
        distinct: Dict[str, int] = {}
        self._rows = np.array([distinct.setdefault(t, len(distinct)) for t in self.sources + self.targets])
        self._distinct = list(distinct)
        self.tokenizer, self.pooling, self.batch_size, self.max_length = tokenizer, pooling, batch_size, max_length
        self.directions = tuple(dict.fromkeys(directions))
        self.names = {"forward": name, "reverse": reverse_name or f"{name}_reverse"}
        self.amp, self.prefix, self.max_score_elements = amp, prefix, max_score_elements
        self.source_transform, self.target_transform = source_transform, target_transform
        self.results: Dict[str, RetrievalResult] = {}
        self._tokenized: Dict[int, tuple] = {}
        for side, texts in (("target", self.targets), ("source", self.sources)):
            dup = len(texts) - len(set(texts))
            if dup and ((side == "target" and "forward" in self.directions)
                        or (side == "source" and "reverse" in self.directions)):
                logger.warning("%s: %d duplicate %s sentence(s) among the candidates; identical candidates tie, "
                               "and a tie counts against the gold", name, dup, side)

    # -- tokenisation and batches
    def _limit(self, tokenizer, model) -> int:
        config = getattr(encoder_of(model), "config", None)
        limits = [self.max_length, getattr(tokenizer, "model_max_length", None),
                  getattr(config, "max_position_embeddings", None)]
        return min(int(x) for x in limits if x and x < 10 ** 9)

    def tokenized(self, tokenizer, model) -> _Tokenized:
        """The distinct sentences of both sides tokenised for `tokenizer`; cached."""
        max_length = self._limit(tokenizer, model)
        key = id(tokenizer)
        cached = self._tokenized.get(key)
        if cached is None or cached[0] is not tokenizer or cached[1] != max_length:
            tok = _Tokenized(self._distinct, tokenizer, max_length, self.pooling)
            if tok.truncated:
                logger.warning("%d of %d sentences are longer than %d tokens and were truncated", tok.truncated,
                               len(tok.lengths), max_length)
            if tok.empty:
                logger.warning("%d sentences have no token to pool (pooling %s): their vectors are zero",
                               tok.empty, self.pooling)
            self._tokenized[key] = cached = (tokenizer, max_length, tok)
        return cached[2]

    def batches(self, tokenizer, model, device) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                  torch.Tensor]]:
        """(distinct-sentence indices, input_ids, attention_mask, pool weights) on `device`, batches of sentences
        of similar length (longest first), each padded to its longest sentence (to a multiple of 8
        under autocast on a GPU, for tensor cores)."""
        tok = self.tokenized(tokenizer, model)
        multiple = 8 if self.amp and device.type == "cuda" else 1
        for start in range(0, len(tok.order), self.batch_size):
            idx = tok.order[start:start + self.batch_size]
            width = int(tok.lengths[idx].max())
            width = min(tok.input_ids.shape[1], -(-width // multiple) * multiple)
            yield (torch.from_numpy(idx).to(device, non_blocking=True),
                   torch.from_numpy(tok.input_ids[idx, :width]).to(device, non_blocking=True),
                   torch.from_numpy(tok.attention_mask[idx, :width]).to(device, non_blocking=True),
                   torch.from_numpy(tok.pool_weight[idx, :width]).to(device, non_blocking=True))

    @torch.no_grad()
    def embed(self, model, tokenizer=None) -> torch.Tensor:
        """fp32 sentence vectors (layers, sources + targets, hidden) on the model's device. `model` may be a
        `SentenceTransformer`: its transformer is used, with its tokenizer unless `tokenizer` is given."""
        model, own_tokenizer = hf_model_and_tokenizer(model)
        tokenizer = tokenizer or own_tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("no tokenizer: pass one to the evaluator or to the call")
        encoder = encoder_of(model)
        device = next(encoder.parameters()).device
        was_training = model.training
        model.eval()
        vectors = None
        try:
            for idx, ids, mask, weight in self.batches(tokenizer, model, device):
                with evaluation_autocast(device, self.amp):  # bf16 on a CPU without it: one-line refusal
                    out = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                pooled = pool_layers(out.hidden_states, weight)
                if vectors is None:
                    vectors = pooled.new_empty((pooled.shape[0], len(self._distinct), pooled.shape[2]))
                vectors[:, idx] = pooled
        finally:
            model.train(was_training)
        return vectors[:, torch.from_numpy(self._rows).to(device)]

    def __call__(self, model, tokenizer=None, output_path: Optional[str] = None, epoch: int = -1,
                 steps: int = -1) -> Dict[str, float]:
        """Retrieval metrics of `model` at every layer. `output_path`, `epoch` and `steps` are accepted
        for the sentence-transformers evaluator signature and not used (run_xsr.py writes the files)."""
        vectors = self.embed(model, tokenizer)
        n = len(self.sources)
        if self.source_transform is not None or self.target_transform is not None:
            src, tgt = vectors[:, :n], vectors[:, n:]
            vectors = torch.cat([self.source_transform(src) if self.source_transform else src,
                                 self.target_transform(tgt) if self.target_transform else tgt], dim=1)
        sides = {"forward": (vectors[:, :n], vectors[:, n:]), "reverse": (vectors[:, n:], vectors[:, :n])}
        self.results = {}
        metrics: Dict[str, float] = {}
        for direction in self.directions:
            ranks, top = rank_candidates(*sides[direction], max_elements=self.max_score_elements)
            ranks, top = ranks.T.cpu().numpy(), top.T.cpu().numpy()  # (queries, layers)
            scores = retrieval_metrics(ranks)
            result = RetrievalResult(self.names[direction], ranks, top, scores["mrr"], scores["acc1"])
            self.results[result.name] = result
            metrics.update(result.metrics(self.prefix))
        return metrics


def format_layer_table(results: Dict[str, RetrievalResult]) -> str:
    """MRR (acc@1) per layer, one column per set; the best layer of each set marked with `*`."""
    names = list(results)
    layers = max(r.ranks.shape[1] for r in results.values())
    width = max([16] + [len(n) + 2 for n in names])
    lines = ["layer  " + "".join(f"{n:>{width}}" for n in names)]
    for layer in range(layers):
        cells = []
        for n in names:
            r = results[n]
            mark = "*" if layer == r.best_layer else " "
            cells.append(f"{r.mrr[layer]:.3f} ({r.acc1[layer]:.3f}){mark}" if layer < len(r.mrr) else "-")
        lines.append(f"{layer:>5}  " + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)
