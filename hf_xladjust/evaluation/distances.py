"""Distance analysis (Fig. 1 of Efimov et al.): how far apart are the vectors of related words?

For held-out aligned sentence pairs, three sets of (source word, target word) pairs are measured
with the L2 distance of their word vectors (one layer, subwords pooled as in the alignment loss):

* **related**: the aligned (linked) word pairs;
* **unrelated**: each related pair's source word with a linked target word of a *different*,
  unpaired sentence pair (drawn with the seed; same count as related). Drawing the target word
  among linked words keeps the kind of words the same as in the related set: only the pairing
  differs;
* **hard control**: each related pair's source word with a *different* linked target word of the
  same sentence pair (same context, wrong word).

The word pairs are drawn once, from the sentences alone, so every model state is measured on the
same pairs. `WordDistanceEvaluator` is called with a model (sentence-transformers style) and
returns means, medians, the related/unrelated ratio and ROC-AUCs of distance separating related
from unrelated and from hard-control pairs; the distances stay on the evaluator for plotting.

CLI (histograms as PNG plus JSON, for up to five model states)::

    python -m hf_xladjust.evaluation.distances --model original=PATH --model adjusted=PATH \\
        (--pairs aligned_pairs.jsonl | --train_file pairs.txt | --source_file F --target_file F) \\
        --output_dir OUT [--max_sentences N] [--seed S]

or the states an experiment-grid results folder holds for one language and seed (Fig. 1's layout)::

    python -m hf_xladjust.evaluation.distances --results_dir RESULTS --lang es --results_seed 0 [--task nli] \\
        --pairs heldout_aligned_pairs.jsonl --output_dir OUT
"""
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from hf_xladjust.alignment.loss import POOLINGS, encoder_of, pair_word_vectors
from hf_xladjust.alignment.pairs import (
    AlignedPair,
    AlignedPairCollator,
    AlignedPairDataset,
    AlignmentDataArguments,
    build_aligned_pairs,
    read_aligned_pairs,
)
from hf_xladjust.errors import InputError
from hf_xladjust.evaluation.encoders import hf_model_and_tokenizer
from hf_xladjust.files import write_json
from hf_xladjust.precision import AMP_DTYPES, check_cpu_bf16, evaluation_autocast, precision_record
from hf_xladjust.precision import describe as describe_precision
from hf_xladjust.sampling import subsample_indices
from hf_xladjust.tokenization import require_fast

logger = logging.getLogger(__name__)

KINDS = ("related", "unrelated", "hard_control")


# ----------------------------------------------------------------------------- statistics
def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """ROC-AUC of a score separating `positive` from `negative` examples: P(pos > neg) + ½ P(pos = neg).

    The Mann-Whitney U statistic from average ranks (ties count one half), divided by n_pos·n_neg.
    NaN when either side is empty."""
    from scipy.stats import rankdata

    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([pos, neg]))  # average ranks for ties
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))


def distance_auc(related: Sequence[float], other: Sequence[float]) -> float:
    """How well distance tells related pairs from `other` pairs: the probability that an `other`
    pair is farther apart than a related one (1 = fully separated, 0.5 = indistinguishable)."""
    return roc_auc(other, related)


# ----------------------------------------------------------------------------- word-pair samples
def _sentence_keys(sentences: Sequence[Sequence[str]]) -> np.ndarray:
    ids: Dict[tuple, int] = {}
    return np.array([ids.setdefault(tuple(s), len(ids)) for s in sentences], dtype=np.int64)


def sample_word_pairs(pairs: Sequence[AlignedPair], seed: int = 42) -> Dict[str, np.ndarray]:
    """The related, unrelated and hard-control word pairs of `pairs`, drawn with `seed`.

    Each set is an int64 array of rows (source sentence, source word, target sentence, target word).
    An unrelated pair never takes its target word from the same sentence pair, nor from a pair with
    the same source or target sentence (a duplicate would be a translation after all)."""
    rng = np.random.default_rng(seed)
    n_links = np.array([len(p.links) for p in pairs], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(n_links)[:-1]]).astype(np.int64)
    links = np.array([ln for p in pairs for ln in p.links], dtype=np.int64).reshape(-1, 2)
    if len(links) == 0:
        raise ValueError("the aligned sentence pairs have no links")
    sent = np.repeat(np.arange(len(pairs)), n_links)
    related = np.stack([sent, links[:, 0], sent, links[:, 1]], axis=1)
    out = {"related": related}

    # Unrelated: the same source words, each with a linked target word of another sentence pair.
    src_key, tgt_key = _sentence_keys([p.src for p in pairs]), _sentence_keys([p.tgt for p in pairs])
    candidates = np.flatnonzero(n_links > 0)
    other = np.empty(len(sent), dtype=np.int64)
    todo = np.arange(len(sent))
    for _ in range(1000):
        other[todo] = candidates[rng.integers(0, len(candidates), size=len(todo))]
        p, q = sent[todo], other[todo]
        todo = todo[(q == p) | (src_key[q] == src_key[p]) | (tgt_key[q] == tgt_key[p])]
        if len(todo) == 0:
            break
    else:
        raise ValueError("unrelated word pairs need at least two different sentence pairs with links")
    pick = starts[other] + rng.integers(0, n_links[other])
    out["unrelated"] = np.stack([sent, links[:, 0], other, links[pick, 1]], axis=1)

    # Hard control: the same source words, each with another linked target word of its own pair.
    has_other = n_links[sent] >= 2
    rows = np.flatnonzero(has_other)
    local = rows - starts[sent[rows]]
    r = rng.integers(0, n_links[sent[rows]] - 1) if len(rows) else rows
    r = r + (r >= local)
    hard = np.stack([sent[rows], links[rows, 0], sent[rows], links[starts[sent[rows]] + r, 1]], axis=1)
    # Without the 1-to-1 filter the other link may share the target word, or hit another link.
    link_set = {(int(s), int(i), int(j)) for s, i, _, j in related}
    keep = np.array([(int(s), int(i), int(j)) not in link_set for s, i, _, j in hard], dtype=bool)
    out["hard_control"] = hard[keep] if len(hard) else hard.reshape(0, 4)
    return out


# ----------------------------------------------------------------------------- the evaluator
class _Encoded:
    """The sentences of both sides tokenised for one tokenizer: slot features plus word -> slot maps."""

    def __init__(self, pairs: Sequence[AlignedPair], tokenizer, max_length: int):
        dataset = AlignedPairDataset(pairs, tokenizer, max_length)
        self.features, self.word_slots = dataset.features, dataset.word_slots
        self.word_offset = {
            side: np.concatenate([[0], np.cumsum([len(m) for m in maps])[:-1]]).astype(np.int64)
            for side, maps in self.word_slots.items()}
        self.flat_slots = {side: np.concatenate(maps) for side, maps in self.word_slots.items()}


class WordDistanceEvaluator:
    """Distances between word vectors of related, unrelated and hard-control word pairs (Fig. 1).

    Called with a model (a bare encoder or a task model such as `BertForSequenceClassification`,
    whose base encoder is used, or a `SentenceTransformer`, whose transformer and tokenizer are used), it
    returns a dict of metrics:
    `{related,unrelated,hard_control}_{mean,median,count}`, `related_unrelated_ratio`,
    `related_hard_control_ratio`, `auc_unrelated` and `auc_hard_control` (see `distance_auc`).
    The distances of the last call are kept in `self.distances` (kind -> numpy array), and the word
    pairs they belong to in `self.word_pairs` (kind -> rows of source sentence, source word, target
    sentence, target word; pairs with a word truncated away are left out of the distances).

    `tokenizer` is the default; pass `tokenizer=` to a call for a model with its own vocabulary.
    The word pairs depend only on `pairs` and `seed`, so every model is measured on the same pairs.
    """

    primary_metric = "auc_unrelated"

    def __init__(self, pairs: Sequence[AlignedPair], tokenizer=None, seed: int = 42, layer: int = -1,
                 pooling: str = "mean", batch_size: int = 32, max_length: Optional[int] = None,
                 name: str = "", amp: Optional[str] = None):
        if amp not in (None, *AMP_DTYPES):
            raise ValueError(f"amp must be None, 'fp16' or 'bf16', got {amp!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not pairs:
            raise ValueError("no aligned sentence pairs to analyse")
        self.pairs = list(pairs)
        self.tokenizer, self.seed, self.layer, self.pooling = tokenizer, seed, layer, pooling
        self.batch_size, self.max_length, self.name, self.amp = batch_size, max_length, name, amp
        self.word_pairs = sample_word_pairs(self.pairs, seed)
        self.distances: Dict[str, np.ndarray] = {}
        self._encoded: Dict[int, tuple] = {}

    def _encode(self, tokenizer, model) -> _Encoded:
        require_fast(tokenizer, "the distance analysis")
        limits = [self.max_length, tokenizer.model_max_length,
                  getattr(getattr(model, "config", None), "max_position_embeddings", None)]
        max_length = min(int(x) for x in limits if x)
        key = id(tokenizer)
        if key not in self._encoded or self._encoded[key][0] is not tokenizer or self._encoded[key][1] != max_length:
            self._encoded[key] = (tokenizer, max_length, _Encoded(self.pairs, tokenizer, max_length))
        return self._encoded[key][2]

    @torch.no_grad()
    def word_vectors(self, model, tokenizer=None) -> Tuple[Dict[str, torch.Tensor], "_Encoded"]:
        """fp32 vectors of every slot of both sides ("src", "tgt"), concatenated in sentence order
        (on the CPU), and the encoding that maps words to those rows. `model` may be a `SentenceTransformer`:
        its transformer is used, with its tokenizer unless `tokenizer` is given."""
        model, own_tokenizer = hf_model_and_tokenizer(model)
        tokenizer = tokenizer or own_tokenizer or self.tokenizer
        if tokenizer is None:
            raise ValueError("no tokenizer: pass one to the evaluator or to the call")
        enc = self._encode(tokenizer, model)
        encoder = encoder_of(model)
        device = next(encoder.parameters()).device
        was_training = model.training
        model.eval()
        try:
            collate = AlignedPairCollator(tokenizer.pad_token_id)
            # Batches of similar length waste less padding; vectors are put back in sentence order.
            lengths = [max(len(f["src_input_ids"]), len(f["tgt_input_ids"])) for f in enc.features]
            order = np.argsort(lengths, kind="stable")
            chunks = {"src": [None] * len(order), "tgt": [None] * len(order)}
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                batch = collate([enc.features[i] for i in idx])
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                with evaluation_autocast(device, self.amp):  # the forward pass; word vectors come out fp32
                    vectors = dict(zip(("src", "tgt"), pair_word_vectors(encoder, batch, self.layer, self.pooling)))
                for side, vecs in vectors.items():
                    counts = [enc.features[i][f"{side}_num_slots"] for i in idx]
                    for i, part in zip(idx, torch.split(vecs.float().cpu(), counts)):
                        chunks[side][i] = part
        finally:
            model.train(was_training)
        return {side: torch.cat(parts) for side, parts in chunks.items()}, enc

    def _rows(self, enc: _Encoded, side: str, base: np.ndarray, sentences: np.ndarray, words: np.ndarray):
        slots = enc.flat_slots[side][enc.word_offset[side][sentences] + words]
        return np.where(slots >= 0, base[sentences] + slots, -1)

    def __call__(self, model, tokenizer=None, output_path: Optional[str] = None, epoch: int = -1,
                 steps: int = -1) -> Dict[str, float]:
        """Measure `model` (on its own device, in eval mode, without gradients; its training mode is
        restored after). `output_path`, `epoch` and `steps` are accepted for the sentence-transformers
        evaluator signature and not used: the CLI writes the files."""
        vectors, enc = self.word_vectors(model, tokenizer)
        base = {side: np.concatenate([[0], np.cumsum([f[f"{side}_num_slots"] for f in enc.features])[:-1]])
                .astype(np.int64) for side in ("src", "tgt")}
        metrics: Dict[str, float] = {}
        self.distances = {}
        for kind in KINDS:
            rows = self.word_pairs[kind]
            a = self._rows(enc, "src", base["src"], rows[:, 0], rows[:, 1])
            b = self._rows(enc, "tgt", base["tgt"], rows[:, 2], rows[:, 3])
            ok = (a >= 0) & (b >= 0)
            if (~ok).any():
                logger.warning("%d %s word pairs left out: a word was truncated away", int((~ok).sum()), kind)
            diff = vectors["src"][torch.as_tensor(a[ok])] - vectors["tgt"][torch.as_tensor(b[ok])]
            dist = torch.linalg.vector_norm(diff, dim=-1).numpy().astype(np.float64)
            self.distances[kind] = dist
            metrics[f"{kind}_mean"] = float(dist.mean()) if len(dist) else float("nan")
            metrics[f"{kind}_median"] = float(np.median(dist)) if len(dist) else float("nan")
            metrics[f"{kind}_count"] = int(len(dist))
        metrics["related_unrelated_ratio"] = _ratio(metrics["related_mean"], metrics["unrelated_mean"])
        metrics["related_hard_control_ratio"] = _ratio(metrics["related_mean"], metrics["hard_control_mean"])
        metrics["auc_unrelated"] = distance_auc(self.distances["related"], self.distances["unrelated"])
        metrics["auc_hard_control"] = distance_auc(self.distances["related"], self.distances["hard_control"])
        if self.name:
            metrics = {f"{self.name}_{k}": v for k, v in metrics.items()}
        return metrics


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else float("nan")


# ----------------------------------------------------------------------------- report
TABLE_COLUMNS = (("related", "related_mean"), ("unrelated", "unrelated_mean"), ("hard ctl", "hard_control_mean"),
                 ("rel/unrel", "related_unrelated_ratio"), ("AUC unrel", "auc_unrelated"),
                 ("AUC hard", "auc_hard_control"))


def format_table(results: Dict[str, Dict[str, float]]) -> str:
    """A compact text table: one row per model state, means, ratio and AUCs."""
    width = max([len("model")] + [len(n) for n in results])
    head = f"{'model':<{width}}  " + "  ".join(f"{h:>9}" for h, _ in TABLE_COLUMNS)
    lines = [head, "-" * len(head)]
    for name, m in results.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{m[k]:>9.4f}" if k in m else f"{'-':>9}"
                                                     for _, k in TABLE_COLUMNS))
    return "\n".join(lines)


def plot_distances(distances: Dict[str, Dict[str, np.ndarray]], metrics: Dict[str, Dict[str, float]], path: str,
                   bins: int = 50) -> str:
    """Histograms (densities) of related vs unrelated (and hard-control) distances, one panel per
    model state, with shared axes; each title gives the state and its AUC."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(distances)
    top = max([float(d.max()) for dd in distances.values() for d in dd.values() if len(d)] + [1e-6])
    edges = np.linspace(0.0, top * 1.02, bins + 1)
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), sharex=True, sharey=True,
                             squeeze=False)
    style = {"related": dict(histtype="stepfilled", alpha=0.5, color="tab:blue"),
             "unrelated": dict(histtype="stepfilled", alpha=0.5, color="tab:orange"),
             "hard_control": dict(histtype="step", linewidth=1.5, color="tab:green")}
    for ax, name in zip(axes[0], names):
        for kind in KINDS:
            d = distances[name].get(kind)
            if d is not None and len(d):
                ax.hist(d, bins=edges, density=True, label=f"{kind.replace('_', ' ')} (n={len(d)})", **style[kind])
        m = metrics[name]
        ax.set_title(f"{name}\nAUC {m['auc_unrelated']:.3f} (hard control {m['auc_hard_control']:.3f})",
                     fontsize=10)
        ax.set_xlabel("L2 distance")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("density")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- CLI
@dataclass
class DistanceAnalysisArguments:
    """What to measure and where the results go (`--model NAME=PATH` is repeated, one per state)."""

    output_dir: str = field(metadata={"help": "Where distances.png, distances.json and distances.npz go."})
    pairs: Optional[str] = field(
        default=None, metadata={"help": "HELD-OUT aligned pairs (the aligned_pairs.jsonl format), never the file the "
                                        "model was adjusted on: its words were pulled together in training."}
    )
    train_file: Optional[str] = field(default=None, metadata={"help": "'source ||| target' lines, aligned here."})
    source_file: Optional[str] = field(default=None, metadata={"help": "Source side, one sentence a line."})
    target_file: Optional[str] = field(default=None, metadata={"help": "Target side, line-aligned."})
    seed: int = field(default=42, metadata={"help": "Seed of the sentence sample and the unrelated/hard pairs."})
    layer: int = field(default=-1, metadata={"help": "Hidden-state index; -1 is the last layer (the paper's)."})
    pooling: str = field(default="mean", metadata={"help": "Subwords -> word vector: mean (paper), first or last."})
    batch_size: int = field(default=32, metadata={"help": "Sentence pairs per forward pass."})
    bins: int = field(default=50, metadata={"help": "Histogram bins."})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, ... (default: cuda if available)."})
    amp: Optional[str] = field(default=None, metadata={
        "help": "fp16 or bf16: the forward passes under autocast (distances stay fp32); bf16 on a CPU needs AMX "
                "or AVX512-BF16."})
    results_dir: Optional[str] = field(default=None, metadata={
        "help": "An experiment-grid results folder: measure the model states it holds for --lang and "
                "--results_seed (original, adjusted, original/adjusted + fine-tuned on --task, adjusted + "
                "continual); --model adds states or replaces one of the same name."})
    lang: Optional[str] = field(default=None, metadata={"help": "With --results_dir: the language of the models."})
    task: str = field(default="nli", metadata={"help": "With --results_dir: whose fine-tuned models (nli, ner, qa)."})
    results_seed: Optional[int] = field(default=None, metadata={
        "help": "With --results_dir: the seedN folders to read (default: --seed)."})

    def __post_init__(self):
        sources = [bool(self.pairs), bool(self.train_file), bool(self.source_file or self.target_file)]
        if sum(sources) != 1:
            raise ValueError("give one of --pairs, --train_file, or --source_file with --target_file")
        if bool(self.source_file) != bool(self.target_file):
            raise ValueError("--source_file and --target_file go together")
        if self.pooling not in POOLINGS:
            raise ValueError(f"--pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.results_dir and not self.lang:
            raise ValueError("--results_dir needs --lang (the language folder of the models)")
        if self.amp not in (None, *AMP_DTYPES):
            raise ValueError(f"--amp must be fp16 or bf16, got {self.amp!r}")


MAX_MODELS = 5
DEFAULT_MAX_SENTENCES = 1000


def parse_model_specs(specs: Sequence[str]) -> Dict[str, str]:
    """`NAME=PATH` (or a bare PATH, named by its folder) -> ordered {name: path}."""
    models: Dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = os.path.basename(os.path.normpath(spec)), spec
        if not name or not path:
            raise ValueError(f"--model wants NAME=PATH, got {spec!r}")
        if name in models:
            raise ValueError(f"model name {name!r} given twice")
        models[name] = path
    if not 1 <= len(models) <= MAX_MODELS:
        raise ValueError(f"give 1 to {MAX_MODELS} --model NAME=PATH states, got {len(models)}")
    return models


# The model states of one language and seed in an experiment-grid results folder (Fig. 1's five panels):
# adjusted encoders in adjust/{lang}/seed{n}/, fine-tuned models in {task}/{regime}/{lang}/seed{n}/.
RESULT_STATES = (("adjusted", "adjust/{lang}/seed{seed}"),
                 ("original+{task}", "{task}/original/{lang}/seed{seed}"),
                 ("adjusted+{task}", "{task}/adjusted/{lang}/seed{seed}"),
                 ("adjusted+{task}+cont", "{task}/adjusted_cont/{lang}/seed{seed}"))


def models_from_results(results_dir: str, lang: str, seed: int, task: str = "nli") -> Dict[str, str]:
    """{state name: model folder} of the states present (a folder with config.json) for `lang` and
    `seed`, the original model first: the model the adjusted encoder (or, failing that, a fine-tuned
    original) started from, followed back through run_args.json."""
    from hf_xladjust.alignment.anchor import resolve_anchor_path

    found: Dict[str, str] = {}
    for name, pattern in RESULT_STATES:
        path = os.path.join(results_dir, pattern.format(lang=lang, seed=seed, task=task))
        if os.path.isfile(os.path.join(path, "config.json")):
            found[name.format(task=task)] = path
        else:
            logger.info("no %s model in %s", name.format(task=task), path)
    if not found:
        raise InputError(f"no model folder for language {lang!r} and seed {seed} (looked for "
                         f"{', '.join(p.format(lang=lang, seed=seed, task=task) for _, p in RESULT_STATES)})",
                         results_dir)
    models: Dict[str, str] = {}
    for start in (found.get("adjusted"), found.get(f"original+{task}")):
        origin = resolve_anchor_path(start) if start else None
        if origin and origin != start:
            models["original"] = origin
            break
    else:
        logger.warning("the original model is not recorded in %s (run_args.json); give it with --model original=PATH",
                       results_dir)
    models.update(found)
    return models


def model_states(args: DistanceAnalysisArguments, model_specs: Optional[Sequence[str]]) -> Dict[str, str]:
    """The states to measure: those of --results_dir, then --model NAME=PATH (adding, or replacing a
    state of the same name); 1 to MAX_MODELS in all."""
    models: Dict[str, str] = {}
    if args.results_dir:
        seed = args.seed if args.results_seed is None else args.results_seed
        models = models_from_results(args.results_dir, args.lang, seed, args.task)
    if model_specs:
        models.update(parse_model_specs(model_specs))
    if not 1 <= len(models) <= MAX_MODELS:
        raise ValueError(f"measure 1 to {MAX_MODELS} model states, got {len(models)}: {', '.join(models) or 'none'} "
                         "(give --model NAME=PATH or --results_dir with --lang)")
    return models


def load_pairs(args: DistanceAnalysisArguments,
               data_args: AlignmentDataArguments) -> Tuple[List[AlignedPair], Dict]:
    """The held-out aligned pairs: read from --pairs (sampled down to --max_sentences), or aligned
    here from a parallel corpus with the alignment options of run_adjust.py."""
    if args.pairs:
        pairs = read_aligned_pairs(args.pairs)
        n = len(pairs)
        pairs = [pairs[i] for i in subsample_indices(n, data_args.max_sentences, args.seed)]
        pairs = [p for p in pairs if p.links]
        if not pairs:
            raise InputError("no aligned pair with a link", args.pairs)
        return pairs, {"source": args.pairs, "sentences_in_file": n}
    pairs, stats = build_aligned_pairs(data_args, args.source_file, args.target_file, args.train_file,
                                       seed=args.seed, cache_dir=os.path.join(args.output_dir, "alignment_cache"))
    return pairs, {"source": args.train_file or [args.source_file, args.target_file], **stats}


CLI_DESCRIPTION = """L2 distances of related vs unrelated word vectors (Fig. 1), for up to five model states, on
held-out aligned sentence pairs: distances.png, distances.json, distances.npz. Example:

    python -m hf_xladjust.evaluation.distances --model original=models/e5-small \\
        --model adjusted=out/adjusted-es --train_file heldout.txt --output_dir out/distances
"""


def build_parser():
    from hf_xladjust.cli import script_parser

    parser = script_parser((DistanceAnalysisArguments, AlignmentDataArguments), CLI_DESCRIPTION,
                           prog="python -m hf_xladjust.evaluation.distances")
    parser.add_argument("--model", action="append", metavar="NAME=PATH",
                        help="A model state to measure (repeat, up to 5): an encoder or a fine-tuned task "
                             "checkpoint; each folder brings its own tokenizer. Needed unless --results_dir.")
    parser.set_defaults(max_sentences=DEFAULT_MAX_SENTENCES)
    return parser


def run_distances(args: DistanceAnalysisArguments, data_args: AlignmentDataArguments,
                  model_specs: Optional[Sequence[str]]):
    from transformers import AutoModel, AutoTokenizer

    models = model_states(args, model_specs)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    os.makedirs(args.output_dir, exist_ok=True)
    pairs, source = load_pairs(args, data_args)
    evaluator = WordDistanceEvaluator(pairs, seed=args.seed, layer=args.layer, pooling=args.pooling,
                                      batch_size=args.batch_size, max_length=data_args.align_max_length,
                                      amp=args.amp)
    precision = precision_record(args.amp == "bf16", args.amp == "fp16", device.type)
    if args.amp == "bf16" and device.type == "cpu":
        check_cpu_bf16("--amp bf16")
    logger.info(describe_precision(precision))
    counts = {"sentence_pairs": len(pairs), **{k: int(len(v)) for k, v in evaluator.word_pairs.items()}}
    logger.info("word pairs: %s", counts)

    results, distances = {}, {}
    for name, path in models.items():
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
        model = AutoModel.from_pretrained(path).to(device)  # a task checkpoint loads as its base encoder
        results[name] = {"path": path, **evaluator(model, tokenizer=tokenizer)}
        distances[name] = dict(evaluator.distances)
        del model

    png = plot_distances(distances, results, os.path.join(args.output_dir, "distances.png"), bins=args.bins)
    report = {"models": results, "counts": counts,
              "settings": {"seed": args.seed, "layer": args.layer, "pooling": args.pooling,
                           "max_sentences": data_args.max_sentences, "results_dir": args.results_dir,
                           "lang": args.lang, "task": args.task, "results_seed": args.results_seed,
                           "precision": precision},
              "data": source}
    json_path = os.path.join(args.output_dir, "distances.json")
    write_json(json_path, report, default=str)
    arrays = {f"{name}/{kind}": d for name, dd in distances.items() for kind, d in dd.items()}
    arrays.update({f"word_pairs/{kind}": rows for kind, rows in evaluator.word_pairs.items()})
    np.savez_compressed(os.path.join(args.output_dir, "distances.npz"), **arrays)
    print(format_table(results))
    print(f"word pairs: {counts['related']} related, {counts['unrelated']} unrelated, "
          f"{counts['hard_control']} hard control, from {counts['sentence_pairs']} sentence pairs")
    print(f"wrote {png} and {json_path}")
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args, data_args, rest = parser.parse_args_into_dataclasses(argv)
    except ValueError as e:  # a __post_init__ check
        parser.error(str(e))
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO,
                        datefmt="%m/%d/%Y %H:%M:%S", handlers=[logging.StreamHandler(sys.stderr)])
    try:
        run_distances(args, data_args, rest.model)
    except (InputError, ValueError) as e:
        print(f"hf_xladjust.evaluation.distances: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
