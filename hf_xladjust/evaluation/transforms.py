"""Evaluation-time representation transforms, the two baselines beside cross-lingual adjustment:

* `rotation`, orthogonal Procrustes (Mikolov et al. 2013; Kulshreshtha et al. 2020; the baseline of
  Cao et al. 2020): per target language and hidden layer, W = argmin_{W orthogonal} ||X_t W - X_en||_F,
  W = U V^T from the SVD U S V^T of X_t^T X_en. Target vectors are mapped into the English space, x -> x W.
* `normalize`, vector-space normalisation (Zhao et al. 2021): per language and layer the mean mu and std
  sigma (per dimension, population std) of its word vectors. For retrieval each side is standardised with
  its own statistics, (x - mu_L) / sigma_L. For a fine-tuned head, trained on raw English vectors, a target
  vector is mapped to the English moments instead, (x - mu_t) / sigma_t * sigma_en + mu_en, and English
  is left unchanged (our deviation from Zhao et al., who standardise before fine-tuning).

Both are fitted on the word vectors (mean of the subword vectors, as the alignment loss) of the linked
words of the aligned pairs of ONE parallel corpus (`build_aligned_pairs`, the same pair options as
run_adjust.py, CLS<->CLS and SEP<->SEP links included with --link_special_tokens), at every hidden state
0..L in one forward pass per batch. Only sufficient statistics are kept (float64 sums and, for the
rotation, X_t^T X_en per layer), so the corpus size does not bound memory.

`python -m hf_xladjust.evaluation.transforms --kind rotation --model_name_or_path M --source_file en.txt
--target_file es.txt --target_lang es --output_dir out/rot-es` writes `representation_transform.pt` (a dict:
kind, reference_lang "en", num_layers L, hidden_size H, languages {lang: tensors with L+1 rows, one per
hidden state}), `representation_transform.json` (pairs and words used, per-layer fit residuals) and
`run_args.json`, last. run_glue_xl.py, run_ner_xl.py and run_xsr.py apply it with
`--representation_transform PATH`.
"""
import contextlib
import functools
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from hf_xladjust.alignment.loss import encoder_of, pool_words
from hf_xladjust.errors import InputError
from hf_xladjust.files import InputPath

logger = logging.getLogger(__name__)

KINDS = ("rotation", "normalize")
REFERENCE_LANG = "en"
FILE_NAME = "representation_transform.pt"
SUMMARY_NAME = "representation_transform.json"
# sigma below this (a dimension constant over the corpus) is clamped when a normalisation is applied
STD_FLOOR = 1e-6


# ----------------------------------------------------------------------------- word vectors
def linked_word_vectors(encoder, batch: Dict) -> tuple:
    """fp32 word vectors of every linked word of a collated `AlignedPairCollator` batch at EVERY hidden
    state: (English (links, L+1, H), target (links, L+1, H)), row k of both for link k. One encoder call
    on the stacked sides with `output_hidden_states`; the layers are concatenated along the hidden axis so
    that one `pool_words` scatter pools all of them."""
    length = max(batch["src_input_ids"].shape[1], batch["tgt_input_ids"].shape[1])

    def pad(x, value=0):
        return F.pad(x, (0, length - x.shape[1]), value=value)

    input_ids = torch.cat([pad(batch["src_input_ids"]), pad(batch["tgt_input_ids"])])
    mask = torch.cat([pad(batch["src_attention_mask"]), pad(batch["tgt_attention_mask"])])
    hidden = encoder(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
    layers, size = len(hidden), hidden[0].shape[-1]
    stacked = torch.cat([h.float() for h in hidden], dim=-1)  # (2B, T, (L+1) H)
    n = batch["src_input_ids"].shape[0]
    src = pool_words(stacked[:n], pad(batch["src_token_slot"], -1), batch["src_num_slots"])
    tgt = pool_words(stacked[n:], pad(batch["tgt_token_slot"], -1), batch["tgt_num_slots"])
    return (src[batch["src_link_slots"]].view(-1, layers, size),
            tgt[batch["tgt_link_slots"]].view(-1, layers, size))


class PairStatistics:
    """float64 sums over linked word pairs (x target, y English) per layer: count, Σx, Σy, Σx², Σy², Σxy
    per dimension, and with `cross` the full X^T Y (layers, H, H) for the rotation."""

    def __init__(self, layers: int, hidden: int, cross: bool, device):
        z = {"dtype": torch.float64, "device": device}
        self.n = 0
        self.sx, self.sy, self.sxx, self.syy, self.sxy = (torch.zeros(layers, hidden, **z) for _ in range(5))
        self.cross = torch.zeros(layers, hidden, hidden, **z) if cross else None

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """x, y: (links, layers, H)."""
        x, y = x.double(), y.double()
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += (x * x).sum(0)
        self.syy += (y * y).sum(0)
        self.sxy += (x * y).sum(0)
        if self.cross is not None:
            self.cross += torch.bmm(x.transpose(0, 1).transpose(1, 2), y.transpose(0, 1))

    def moments(self, side: str):
        """(mean, population std) per layer and dimension of the target ("x") or English ("y") vectors."""
        s, ss = (self.sx, self.sxx) if side == "x" else (self.sy, self.syy)
        mean = s / self.n
        return mean, (ss / self.n - mean * mean).clamp_min(0).sqrt()

    def residual_before(self) -> torch.Tensor:
        """Mean over the pairs of ||x - y||², per layer."""
        return (self.sxx + self.syy - 2 * self.sxy).sum(-1) / self.n

    def affine_residual(self, a, b, c, e) -> torch.Tensor:
        """Mean over the pairs of ||(a x + b) - (c y + e)||² per layer, for per-dimension affine maps."""
        d = b - e
        total = (a * a * self.sxx + c * c * self.syy + self.n * d * d + 2 * a * d * self.sx
                 - 2 * c * d * self.sy - 2 * a * c * self.sxy)
        return total.sum(-1) / self.n


def procrustes(cross: torch.Tensor) -> torch.Tensor:
    """The orthogonal W minimising ||X W - Y||_F given X^T Y (..., H, H): U V^T of its SVD. When X^T Y is
    rank-deficient (the outputs of a LayerNorm with zero bias lie in the hyperplane sum(x) = 0), W is
    unique only on the span of the vectors; every minimiser maps the vectors the same way."""
    u, _, vh = torch.linalg.svd(cross)
    return u @ vh


@torch.no_grad()
def fit_statistics(model, dataset, collator, batch_size: int = 32, kind: str = "rotation") -> PairStatistics:
    """Accumulate `PairStatistics` over an `AlignedPairDataset` (in order, the model in eval mode)."""
    encoder = encoder_of(model)
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    stats = None
    try:
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            en, tgt = linked_word_vectors(encoder, batch)
            if stats is None:
                stats = PairStatistics(en.shape[1], en.shape[2], kind == "rotation", device)
            stats.add(tgt, en)
    finally:
        encoder.train(was_training)
    if stats is None or stats.n == 0:
        raise ValueError("no linked word is left to fit on (all truncated away?)")
    return stats


def fit_transform(stats: PairStatistics, kind: str, lang: str) -> tuple:
    """(languages {lang: tensors} as stored in the file, per-layer residuals for the summary)."""
    before = stats.residual_before()
    if kind == "rotation":
        w = procrustes(stats.cross)
        after = (stats.sxx.sum(-1) + stats.syy.sum(-1) - 2 * (w * stats.cross).sum((-2, -1))) / stats.n
        languages = {lang: {"rotation": w.float().cpu()}}
        residuals = {"residual_before": before, "residual_after": after}
    elif kind == "normalize":
        (mx, sx), (my, sy) = stats.moments("x"), stats.moments("y")
        a = sy / sx.clamp_min(STD_FLOOR)
        ones = torch.ones_like(a)
        after = stats.affine_residual(a, my - a * mx, ones, torch.zeros_like(a))  # target mapped to en moments
        standardized = stats.affine_residual(1 / sx.clamp_min(STD_FLOOR), -mx / sx.clamp_min(STD_FLOOR),
                                             1 / sy.clamp_min(STD_FLOOR), -my / sy.clamp_min(STD_FLOOR))
        languages = {REFERENCE_LANG: {"mean": my.float().cpu(), "std": sy.float().cpu()},
                     lang: {"mean": mx.float().cpu(), "std": sx.float().cpu()}}
        residuals = {"residual_before": before, "residual_after": after, "residual_standardized": standardized}
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    return languages, {k: [round(float(v), 6) for v in r] for k, r in residuals.items()}


# ----------------------------------------------------------------------------- the file
def transform_path(path: str) -> str:
    """The .pt file of `path`: the file itself or `representation_transform.pt` in a folder."""
    if os.path.isdir(path):
        path = os.path.join(path, FILE_NAME)
    if not os.path.isfile(path):
        raise InputError("no such file (--representation_transform takes the .pt file of "
                         "hf_xladjust.evaluation.transforms or its output folder)", path)
    return path


@dataclass
class RepresentationTransform:
    """A fitted transform: per language a rotation (L+1, H, H) or mean/std (L+1, H), rows = hidden states."""

    kind: str
    num_layers: int
    hidden_size: int
    languages: Dict[str, Dict[str, torch.Tensor]]
    path: Optional[str] = None
    reference_lang: str = REFERENCE_LANG
    meta: Dict = field(default_factory=dict)

    def to_dict(self) -> Dict:
        return {"kind": self.kind, "reference_lang": self.reference_lang, "num_layers": self.num_layers,
                "hidden_size": self.hidden_size, "languages": self.languages, **self.meta}

    def save(self, path: str) -> None:
        from hf_xladjust.files import atomic_write

        with atomic_write(path, "wb") as f:
            torch.save(self.to_dict(), f)

    @classmethod
    def load(cls, path: str) -> "RepresentationTransform":
        """Read a .pt file (or the folder holding one); anything but a transform is an InputError naming it."""
        path = transform_path(path)
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
            kind, languages = raw["kind"], raw["languages"]
            num_layers, hidden = int(raw["num_layers"]), int(raw["hidden_size"])
        except Exception as e:  # any unreadable file is the user's input
            raise InputError(f"not a representation transform ({type(e).__name__}: {e})", path) from None
        if kind not in KINDS:
            raise InputError(f"unknown kind {kind!r}; expected one of {KINDS}", path)
        want = {"rotation": {"rotation": (num_layers + 1, hidden, hidden)},
                "normalize": {"mean": (num_layers + 1, hidden), "std": (num_layers + 1, hidden)}}[kind]
        for lang, tensors in languages.items():
            for name, shape in want.items():
                if not torch.is_tensor(tensors.get(name)) or tuple(tensors[name].shape) != shape:
                    raise InputError(f"{lang}: {name} should be a tensor of shape {shape}", path)
        meta = {k: v for k, v in raw.items()
                if k not in ("kind", "languages", "num_layers", "hidden_size", "reference_lang")}
        return cls(kind, num_layers, hidden, languages, path, raw.get("reference_lang", REFERENCE_LANG), meta)

    # -- checks
    def check_model(self, config) -> None:
        """The transform fits the evaluated model's hidden states (as many layers, the same width)."""
        layers, hidden = getattr(config, "num_hidden_layers", None), getattr(config, "hidden_size", None)
        if (layers, hidden) != (self.num_layers, self.hidden_size):
            raise InputError(f"fitted on a model with {self.num_layers} layers of size {self.hidden_size}, but the "
                             f"evaluated model has {layers} of size {hidden}", self.path)

    def needed(self, lang: str, standardize_english: bool = False) -> List[str]:
        """Languages whose tensors applying to `lang` reads."""
        if self.kind == "rotation":
            return [] if lang == self.reference_lang else [lang]
        if lang == self.reference_lang:
            return [lang] if standardize_english else []
        return [lang, self.reference_lang]

    def require(self, languages: Sequence[str], standardize_english: bool = False) -> None:
        """Every evaluated language the transform would touch is in the file (InputError naming it)."""
        missing = [x for lang in dict.fromkeys(languages) for x in self.needed(lang, standardize_english)
                   if x not in self.languages]
        if missing:
            raise InputError(f"no {self.kind} for language(s) {', '.join(dict.fromkeys(missing))}; the file has "
                             f"{', '.join(self.languages) or 'none'} (fit one with hf_xladjust.evaluation.transforms "
                             f"--target_lang {missing[0]})", self.path)

    def describe(self, applied: Sequence[str]) -> Dict:
        """What the run records: path, kind, the languages it was applied to, the languages of the file."""
        return {"path": self.path, "kind": self.kind, "reference_lang": self.reference_lang,
                "applied_to": list(dict.fromkeys(applied)), "fitted_languages": list(self.languages),
                **{k: self.meta[k] for k in ("model_name_or_path",) if k in self.meta}}

    # -- application
    def _tensor(self, lang, name, like: torch.Tensor, layer=None):
        t = self.languages[lang][name]
        t = t if layer is None else t[layer]
        return t.to(device=like.device, dtype=torch.float32)

    def to_english(self, x: torch.Tensor, lang: str, layer: Optional[int] = None) -> torch.Tensor:
        """For a head trained on English: `x` (..., H) of `lang` at hidden state `layer` into the English
        space (rotation: x W; normalize: target moments -> English moments). English is returned as is.
        With `layer=None`, `x` is (L+1, N, H), one slice per hidden state."""
        if lang == self.reference_lang:
            return x
        return self._apply(x, lang, layer, to_english=True)

    def standardize(self, x: torch.Tensor, lang: str, layer: Optional[int] = None) -> torch.Tensor:
        """For retrieval: rotation maps `lang` into the English space (English as is); normalize
        standardises every language, English included, with its own mean and std."""
        if self.kind == "rotation" and lang == self.reference_lang:
            return x
        return self._apply(x, lang, layer, to_english=False)

    def _apply(self, x, lang, layer, to_english):
        self.require([lang], standardize_english=not to_english)
        h = x.float()
        if layer is None and h.dim() != 3:
            raise ValueError(f"layer=None needs (layers, N, H) vectors, got shape {tuple(x.shape)}")
        if self.kind == "rotation":
            w = self._tensor(lang, "rotation", h, layer)
            out = h @ w if layer is not None else torch.bmm(h, w)
        else:
            def moments(code):
                mean, std = self._tensor(code, "mean", h, layer), self._tensor(code, "std", h, layer)
                std = std.clamp_min(STD_FLOOR)
                return (mean, std) if layer is not None else (mean[:, None], std[:, None])

            mean, std = moments(lang)
            out = (h - mean) / std
            if to_english:
                en_mean, en_std = moments(self.reference_lang)
                out = out * en_std + en_mean
        return out.to(x.dtype)


@dataclass
class RepresentationTransformArguments:
    """`--representation_transform` of run_glue_xl.py, run_ner_xl.py and run_xsr.py."""

    representation_transform: Optional[str] = field(
        default=None,
        metadata={"help": "A transform fitted by hf_xladjust.evaluation.transforms (its .pt file or output folder), "
                          "applied at evaluation/prediction to the non-English inputs: glue/ner the last hidden "
                          "state before the head (rotation x W, normalize to English moments); xsr every layer's "
                          "sentence vectors (rotation: the non-English side; normalize: each side standardised "
                          "with its own language's statistics). English inputs of glue/ner are untouched."},
    )


def transform_input_files(args) -> List[InputPath]:
    """`--representation_transform` (its .pt file or folder) as an input to check before anything loads."""
    path = getattr(args, "representation_transform", None)
    return [InputPath("--representation_transform", path, "any")] if path else []


# ----------------------------------------------------------------------------- heads (glue/ner)
class LastLayerTransform:
    """Applies a transform to the last hidden state of a task model's encoder, before the head: a forward
    hook on the encoder stack (`base_model.encoder`), so the pooler and the head read transformed vectors.
    It is active only inside `with hook.language(lang):` for a non-English `lang`; English passes through.

    A per-token mask can travel with the batch as the `transform_mask` input (1: transform this token),
    for the mixed-language XNLI sets where only one segment is in the target language: a forward pre-hook
    on the model takes it out of the inputs before the model sees it (see `TransformMaskCollator`). Without
    it, every token is transformed. `transformed_tokens` counts the (non-padding) tokens transformed."""

    MASK_KEY = "transform_mask"

    def __init__(self, model, transform: RepresentationTransform):
        base = encoder_of(model)
        stack = getattr(base, "encoder", None)
        if stack is None:
            raise InputError(f"--representation_transform: {type(base).__name__} has no `encoder` module whose "
                             "output is the last hidden state; this architecture is not supported", transform.path)
        transform.check_model(base.config)
        self.transform, self.layer = transform, transform.num_layers
        self.lang, self._mask, self._attention = None, None, None
        self.last_lang = None  # the language of the last `language()` block, None for English
        self.transformed_tokens = 0
        self._handles = [model.register_forward_pre_hook(self._take_inputs, with_kwargs=True),
                         stack.register_forward_hook(self._on_output)]

    def _take_inputs(self, module, args, kwargs):
        self._mask = kwargs.pop(self.MASK_KEY, None)
        self._attention = kwargs.get("attention_mask")
        return args, kwargs

    def _on_output(self, module, args, output):
        if self.lang is None:
            return None
        hidden = output[0] if isinstance(output, tuple) else output["last_hidden_state"]
        new = self.transform.to_english(hidden, self.lang, self.layer)
        keep = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        if self._mask is not None:
            keep = self._mask.to(hidden.device).bool()
            new = torch.where(keep[..., None], new, hidden)
        if self._attention is not None:
            keep = keep & self._attention.to(hidden.device).bool()
        self.transformed_tokens += int(keep.sum())
        if isinstance(output, tuple):
            return (new,) + tuple(output[1:])
        output["last_hidden_state"] = new  # ModelOutput keeps its attribute and tuple views in sync
        return output

    @contextlib.contextmanager
    def language(self, lang: str):
        """Transform the inputs of `lang` inside the block (nothing for English); the count restarts."""
        if lang != self.transform.reference_lang:
            self.transform.require([lang])
        self.lang = self.last_lang = None if lang == self.transform.reference_lang else lang
        self.transformed_tokens = 0
        try:
            yield self
        finally:
            self.lang, self._mask, self._attention = None, None, None

    def describe(self, languages: Sequence[str]) -> Dict:
        """The run's record (see `RepresentationTransform.describe`) for the evaluated `languages`."""
        return {**self.transform.describe([x for x in languages if x != self.transform.reference_lang]),
                "applied_at": f"last hidden state (hidden_states[{self.layer}]), before the head"}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@dataclass
class TransformMaskCollator:
    """Wraps a collator: takes each feature's `transform_mask` (a list per token) out, collates the rest,
    and adds the masks padded with 0 to the batch's width on `padding_side` (that of the tokenizer)."""

    collator: object
    padding_side: str = "right"

    def __call__(self, features):
        key = LastLayerTransform.MASK_KEY
        if not features or key not in features[0]:
            return self.collator(features)
        masks = [f[key] for f in features]
        batch = self.collator([{k: v for k, v in f.items() if k != key} for f in features])
        width = batch["input_ids"].shape[1]
        out = torch.zeros(len(masks), width, dtype=torch.long)
        for i, m in enumerate(masks):
            m = torch.as_tensor(m, dtype=torch.long)[:width]
            if self.padding_side == "left":
                out[i, width - len(m):] = m
            else:
                out[i, :len(m)] = m
        batch[key] = out
        return batch


def segment_masks(encoding, target_segments: Sequence[int]) -> List[List[int]]:
    """Per example of a batched fast-tokenizer encoding of (premise, hypothesis) pairs, 1 on the tokens of
    sequence `target_segments[i]` (0 premise, 1 hypothesis) and 0 elsewhere, special tokens and padding
    included (`sequence_ids`: None for them). Needs a fast tokenizer."""
    if not getattr(encoding, "encodings", None):
        raise InputError("--representation_transform on mixed-language sets needs a fast tokenizer (its "
                         "sequence_ids tell which tokens are in the target-language segment)")
    return [[int(s == seg) for s in encoding.sequence_ids(i)] for i, seg in enumerate(target_segments)]


@contextlib.contextmanager
def predicting_with_mask(trainer):
    """Inside the block the Trainer keeps the `transform_mask` column (it is not an argument of the model's
    forward, so `remove_unused_columns` would drop it) and collates it with `TransformMaskCollator`."""
    args, collator = trainer.args, trainer.data_collator
    remove = args.remove_unused_columns
    side = getattr(trainer.processing_class, "padding_side", "right")
    args.remove_unused_columns = False
    trainer.data_collator = TransformMaskCollator(collator, side)
    try:
        yield
    finally:
        args.remove_unused_columns, trainer.data_collator = remove, collator


@contextlib.contextmanager
def transform_scope(hook: Optional[LastLayerTransform], trainer, lang: str, masked: bool = False):
    """The block in which run_glue_xl.py / run_ner_xl.py predict the set of `lang`: the hook active for it
    (nothing for English or without a hook), with `masked` the `transform_mask` column kept and collated."""
    if hook is None:
        yield None
        return
    with hook.language(lang), (predicting_with_mask(trainer) if masked else contextlib.nullcontext()):
        yield hook


def load_for_heads(path: Optional[str], model, languages: Sequence[str]) -> Optional[LastLayerTransform]:
    """`--representation_transform` of run_glue_xl.py / run_ner_xl.py: load, check the evaluated languages
    and the model, hook it on `model` (inactive until `.language(lang)`); None without a path."""
    if not path:
        return None
    transform = RepresentationTransform.load(path)
    transform.require(languages)
    logger.info("representation transform %s (%s) on the last hidden state for %s", transform.path, transform.kind,
                ", ".join(x for x in languages if x != transform.reference_lang) or "no language")
    return LastLayerTransform(model, transform)


# ----------------------------------------------------------------------------- retrieval (xsr)
def retrieval_transform(transform: Optional[RepresentationTransform], lang: str) -> Optional[Callable]:
    """The map run_xsr.py applies to the sentence vectors (layers, N, H) of a side in `lang`, or None when
    it leaves them as they are (no transform; English under a rotation). Applied after pooling: see
    `SentenceRetrievalEvaluator` for why that equals transforming every token."""
    if transform is None or not transform.needed(lang, standardize_english=True):
        return None
    return functools.partial(transform.standardize, lang=lang)


# ----------------------------------------------------------------------------- the CLI
@dataclass
class TransformArguments:
    """Which transform to fit and where it goes."""

    kind: str = field(metadata={"help": "rotation (orthogonal Procrustes per layer) or normalize (Zhao et al. "
                                        "2021: per-language mean/std per layer).", "choices": list(KINDS)})
    output_dir: str = field(metadata={"help": "Where representation_transform.pt/.json and run_args.json go."})
    seed: int = field(default=42, metadata={"help": "Seed of the --max_sentences sample (as run_adjust.py)."})
    per_device_batch_size: int = field(default=32, metadata={"help": "Sentence pairs per forward pass."})
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda if any)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace a finished run in --output_dir."})

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"--kind must be one of {KINDS}, got {self.kind!r}")
        if self.per_device_batch_size < 1:
            raise ValueError(f"--per_device_batch_size must be positive, got {self.per_device_batch_size}")


CLI_DESCRIPTION = """Fit an evaluation-time baseline on one parallel corpus: a rotation (orthogonal Procrustes)
or a per-language normalisation of every hidden state, applied by run_glue_xl.py, run_ner_xl.py and run_xsr.py
with --representation_transform. Example:

    python -m hf_xladjust.evaluation.transforms --kind rotation --model_name_or_path out/xnli \\
        --source_file wiki.en --target_file wiki.es --target_lang es --output_dir out/rot-es
"""


def build_parser():
    """The CLI's arguments (the grid's dry run checks each step's flags against it): the model, one corpus
    with run_adjust.py's pair options, and `TransformArguments`."""
    from hf_xladjust.alignment.multilingual import AdjustDataArguments
    from hf_xladjust.cli import ModelArguments, script_parser

    return script_parser((ModelArguments, AdjustDataArguments, TransformArguments), CLI_DESCRIPTION,
                         prog="python -m hf_xladjust.evaluation.transforms")


def input_files(args) -> List[InputPath]:
    """The corpus (and Pharaoh file) the fit reads, checked before anything loads (and by the grid's dry run)."""
    from hf_xladjust.alignment.multilingual import adjust_input_files

    return adjust_input_files(args)


def target_language(data_args) -> str:
    """The non-English language of the corpus (the key of the fitted tensors)."""
    lang = data_args.source_lang if data_args.english_is_target else data_args.target_lang
    if not lang or lang == REFERENCE_LANG:
        raise InputError("name the corpus's non-English language: --target_lang xx (or --source_lang xx with "
                         "--target_lang en for 'xx ||| en' files)")
    return lang


def main():
    from transformers import AutoModel, AutoTokenizer, set_seed

    from hf_xladjust.alignment.pairs import AlignedPairCollator, AlignedPairDataset, build_aligned_pairs
    from hf_xladjust.cli import (
        check_output_dir,
        load_pretrained,
        merged_arguments,
        parse_arguments,
        set_cpu_threads,
        write_run_args,
    )
    from hf_xladjust.files import check_input_files, write_json

    model_args, data_args, args = parse_arguments(build_parser())
    if data_args.parallel:
        raise InputError("fits one target language per run (one file per language); give --source_file/"
                         "--target_file or --train_file with --target_lang, not --parallel")
    lang = target_language(data_args)
    check_output_dir(args.output_dir, "run_args.json", args.overwrite_output_dir)
    check_input_files(input_files(merged_arguments(data_args)))
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%m/%d/%Y %H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    logging.getLogger("hf_xladjust").setLevel(logging.INFO)
    set_seed(args.seed)

    hub = model_args.hub_kwargs()
    tokenizer = load_pretrained(AutoTokenizer, *model_args.tokenizer_source(), use_fast=model_args.use_fast_tokenizer,
                                **hub)  # before the alignment: a bad path fails in seconds
    pairs, stats = build_aligned_pairs(data_args, data_args.source_file, data_args.target_file,
                                       data_args.train_file, seed=args.seed,
                                       cache_dir=os.path.join(args.output_dir, "alignment_cache"),
                                       dataset=data_args.translation_dataset(cache_dir=model_args.cache_dir,
                                                                             token=model_args.token))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = set_cpu_threads(device.type)
    model = load_pretrained(AutoModel, model_args.model_name_or_path, "--model_name_or_path", **hub).to(device)
    max_length = min(data_args.align_max_length or tokenizer.model_max_length,
                     getattr(model.config, "max_position_embeddings", tokenizer.model_max_length))
    dataset = AlignedPairDataset(pairs, tokenizer, max_length, data_args.link_special_tokens)
    fitted = fit_statistics(model, dataset, AlignedPairCollator(tokenizer.pad_token_id), args.per_device_batch_size,
                            args.kind)
    languages, residuals = fit_transform(fitted, args.kind, lang)
    summary = {"kind": args.kind, "language": lang, "reference_lang": REFERENCE_LANG,
               "model_name_or_path": model_args.model_name_or_path, "pooling": "mean",
               "sentence_pairs": len(dataset), "linked_words": fitted.n,
               "special_token_links": dataset.special_links, "links_truncated": dataset.links_lost,
               "alignment": stats, "residual": "mean over linked pairs of the squared L2 distance, per hidden "
                                               "state 0..L (after: the target mapped into the English space)",
               **residuals}
    transform = RepresentationTransform(args.kind, model.config.num_hidden_layers, model.config.hidden_size,
                                        languages, meta={"model_name_or_path": model_args.model_name_or_path,
                                                         "linked_words": fitted.n,
                                                         "sentence_pairs": len(dataset)})
    os.makedirs(args.output_dir, exist_ok=True)
    transform.save(os.path.join(args.output_dir, FILE_NAME))
    write_json(os.path.join(args.output_dir, SUMMARY_NAME), summary)
    logger.info("%s for %s fitted on %d linked words of %d sentence pairs; residual per layer %s -> %s",
                args.kind, lang, fitted.n, len(dataset), residuals["residual_before"], residuals["residual_after"])
    write_run_args(args.output_dir, model=model_args, alignment=data_args, transform=args, threads=threads)


if __name__ == "__main__":
    from hf_xladjust.cli import run_main

    run_main(main)
