"""The alignment loss of Eq. 1 (Cao et al. 2020; Efimov et al.), as a small module.

    L = align_weight * mean‖f(t_i) − g(s_i)‖²  +  anchor_weight * mean‖f(s_j) − f0(s_j)‖²

with g = f (the paper's code, `pull_target="current"`) or g = f0 (Cao's variant, `"frozen"`). Word
vectors pool a word's subword vectors at one layer; pooling is one scatter over the whole batch, so
there is no per-word Python loop and no host-device synchronisation. Means are over elements
(pairs × hidden), as `torch.nn.functional.mse_loss` in the paper's code, and are computed in fp32.
A batch whose links were all truncated away has a pull term of 0 (not the NaN of an empty mean).

By default each term is one mean over the whole batch: every link weighs the same. The paper's code
sums the means of sub-batches of 4 sentence pairs, so a link weighs 1/(links in its sub-batch) and
the loss is about (batch / 4) times larger; `sub_batch_size=4` computes exactly that.

`align_objective="contrastive"` (beyond the paper) replaces the pull term by a symmetric InfoNCE over
the linked words of the batch (Wu & Dredze 2020; Gaschi et al. 2023), see `info_nce`; the anchor term
is the same for both objectives.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from hf_xladjust.errors import InputError

POOLINGS = ("mean", "first", "last")
PULL_TARGETS = ("current", "frozen")
ALIGN_OBJECTIVES = ("l2", "contrastive")


@dataclass
class AlignmentLossArguments:
    """How word vectors are made and how the two terms of Eq. 1 are weighted."""

    pooling: str = field(default="mean", metadata={"help": "Subwords -> word vector: mean (paper), first or last."})
    align_layer: int = field(default=-1, metadata={"help": "Hidden-state index to align; -1 is the last layer."})
    pull_target: str = field(
        default="current",
        metadata={"help": "current: pull towards the current English vector (paper's code); frozen: towards f0 "
                          "(Cao et al.)."},
    )
    anchor_weight: float = field(
        default=1.0, metadata={"help": "Weight of the anchor term keeping English near the original model f0."}
    )
    sub_batch_size: Optional[int] = field(
        default=None,
        metadata={"help": "Sum the per-sub-batch means of consecutive sub-batches of this many sentence pairs, as "
                          "the paper's adjustment loop (4): each link weighs 1/(links in its sub-batch). Default: "
                          "one mean over the batch, every link weighing the same. l2 objective only."},
    )
    align_objective: str = field(
        default="l2",
        metadata={"help": "l2: the paper's pull term (mean squared distance of linked words); contrastive: a "
                          "symmetric InfoNCE over the batch's linked words instead (Wu & Dredze 2020; Gaschi et "
                          "al. 2023; beyond the paper). The anchor term is the same for both.",
                  "choices": list(ALIGN_OBJECTIVES)},
    )
    align_temperature: float = field(
        default=0.1,
        metadata={"help": "Temperature τ of the contrastive objective (logits cos/τ). Default 0.1: Wu & Dredze "
                          "(2020)'s contrastive runs (shijie-wu/crosslingual-nlp, "
                          "example/contrastive-alignment/alignment-cntrstv.sh: temp=0.1, normalize=True)."},
    )

    def __post_init__(self):
        # InputError: the run_*.py scripts report it as one line (hf_xladjust.cli.run_main).
        if self.pooling not in POOLINGS:
            raise InputError(f"--pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.pull_target not in PULL_TARGETS:
            raise InputError(f"--pull_target must be one of {PULL_TARGETS}, got {self.pull_target!r}")
        if self.sub_batch_size is not None and self.sub_batch_size < 1:
            raise InputError(f"--sub_batch_size must be positive, got {self.sub_batch_size}")
        if self.align_objective not in ALIGN_OBJECTIVES:
            raise InputError(f"--align_objective must be one of {ALIGN_OBJECTIVES}, got {self.align_objective!r}")
        if not self.align_temperature > 0:  # also catches NaN
            raise InputError(f"--align_temperature must be positive, got {self.align_temperature}")
        if self.align_objective == "contrastive" and self.sub_batch_size:
            raise InputError("--sub_batch_size is the paper's l2 loop; the contrastive objective takes its "
                             "candidates from the whole batch (drop --sub_batch_size)")


# Every default of `AlignmentLoss` is the scripts' (one source: the argument dataclass).
_DEFAULTS = AlignmentLossArguments()
STAGE1_ALIGN_WEIGHT = 1.0  # Eq. 1 has no weight on the pull term (run_adjust.py)


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32 for the distances; fp32 and fp64 stay as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def pool_words(hidden: torch.Tensor, token_slot: torch.Tensor, num_slots: int, pooling: str = "mean") -> torch.Tensor:
    """Word vectors (num_slots, H) from token vectors (B, L, H); `token_slot` (B, L) maps each token to a
    batch-global word slot, -1 for tokens to ignore (padding). A slot no token maps to is a zero vector
    with every pooling."""
    hidden_size = hidden.shape[-1]
    flat = hidden.reshape(-1, hidden_size)
    slots = token_slot.reshape(-1)
    # Ignored tokens go to one extra "dump" slot that is cut off at the end: no boolean indexing, no sync.
    slots = torch.where(slots < 0, torch.full_like(slots, num_slots), slots)
    if pooling == "mean":
        sums = flat.new_zeros(num_slots + 1, hidden_size).index_add_(0, slots, flat)
        # index_add_ rather than bincount: bincount on CUDA reads the maximum back to the host.
        counts = flat.new_zeros(num_slots + 1).index_add_(0, slots, flat.new_ones(slots.shape)).clamp_min(1)
        return (sums / counts[:, None])[:num_slots]
    if pooling not in ("first", "last"):
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")
    # Row `n` (one past the tokens) is a zero vector: an empty slot picks it instead of another word's token.
    n = slots.numel()
    positions = torch.arange(n, device=slots.device)
    if pooling == "first":
        pick = torch.full((num_slots + 1,), n, device=slots.device, dtype=positions.dtype)
        pick = pick.scatter_reduce(0, slots, positions, reduce="amin")
    else:
        pick = torch.full((num_slots + 1,), -1, device=slots.device, dtype=positions.dtype)
        pick = pick.scatter_reduce(0, slots, positions, reduce="amax")
        pick = torch.where(pick < 0, torch.full_like(pick, n), pick)
    return torch.cat([flat, flat.new_zeros(1, hidden_size)])[pick[:num_slots]]


def encoder_of(model: nn.Module) -> nn.Module:
    """The bare encoder of a task model (`BertForX.base_model`), or the model itself when it is one."""
    model = getattr(model, "module", model)  # DDP / DataParallel
    return getattr(model, "base_model", model)


def hidden_layer(encoder: nn.Module, input_ids, attention_mask, layer: int) -> torch.Tensor:
    """Hidden states of one layer; -1 reads `last_hidden_state` without keeping every layer."""
    if layer == -1:
        return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    out = encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return out.hidden_states[layer]


def word_vectors(encoder, batch: Dict, side: str, layer: int = -1, pooling: str = "mean") -> torch.Tensor:
    """fp32 word vectors of one side ("src" or "tgt") of a collated aligned-pair batch."""
    hidden = hidden_layer(encoder, batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"], layer)
    return pool_words(_at_least_fp32(hidden), batch[f"{side}_token_slot"], batch[f"{side}_num_slots"], pooling)


def _pad_to(x: torch.Tensor, length: int, value: int = 0) -> torch.Tensor:
    return F.pad(x, (0, length - x.shape[1]), value=value)


def pair_hidden_states(encoder, batch: Dict, layer: int = -1):
    """fp32 hidden states of both sides, (src, tgt), from ONE encoder call on the stacked batch, both
    right-padded to the longer side's length.

    One call instead of two is faster, and under DDP it keeps a single forward per backward."""
    length = max(batch["src_input_ids"].shape[1], batch["tgt_input_ids"].shape[1])
    input_ids = torch.cat([_pad_to(batch["src_input_ids"], length), _pad_to(batch["tgt_input_ids"], length)])
    mask = torch.cat([_pad_to(batch["src_attention_mask"], length), _pad_to(batch["tgt_attention_mask"], length)])
    hidden = _at_least_fp32(hidden_layer(encoder, input_ids, mask, layer))
    n = batch["src_input_ids"].shape[0]
    return hidden[:n], hidden[n:]


def pair_word_vectors(encoder, batch: Dict, layer: int = -1, pooling: str = "mean"):
    """fp32 word vectors of both sides from ONE encoder call on the stacked batch (`pair_hidden_states`)."""
    src_hidden, tgt_hidden = pair_hidden_states(encoder, batch, layer)
    length = src_hidden.shape[1]
    src_slots = _pad_to(batch["src_token_slot"], length, value=-1)
    tgt_slots = _pad_to(batch["tgt_token_slot"], length, value=-1)
    return (pool_words(src_hidden, src_slots, batch["src_num_slots"], pooling),
            pool_words(tgt_hidden, tgt_slots, batch["tgt_num_slots"], pooling))


def grouped_mse(a: torch.Tensor, b: torch.Tensor, group: Optional[torch.Tensor] = None,
                num_groups: int = 1) -> torch.Tensor:
    """Mean squared error of rows `a` vs `b` (N, H), 0 when N is 0. With `group` (N,) the rows fall into
    `num_groups` groups and the result is the SUM of the groups' means (an empty group adds 0)."""
    sq = (a - b).pow(2)
    if group is None:
        return sq.sum() / max(sq.numel(), 1)  # numel is known on the host: no sync
    per_row = sq.sum(-1)
    sums = per_row.new_zeros(num_groups).index_add_(0, group, per_row)
    counts = per_row.new_zeros(num_groups).index_add_(0, group, torch.ones_like(per_row))
    return (sums / (counts.clamp_min(1) * sq.shape[-1])).sum()


def info_nce(src: torch.Tensor, tgt: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE of N linked pairs, rows of `src` and `tgt` (N, H): logits_ij = cos(s_i, t_j) / τ
    with every target of the batch as a candidate for s_i (and every source for t_j), cross-entropy with
    the diagonal as the label, averaged over the N pairs and over both directions (source->target,
    target->source), as Wu & Dredze (2020)'s `cntrstv` loss. 0 when N is 0 (no NaN), and 0 when N is 1
    (no negatives). Computed in fp32 with autocast off: under autocast the matmul would run in fp16/bf16."""
    n = src.shape[0]  # known on the host: no sync
    with torch.autocast(device_type=src.device.type, enabled=False):
        logits = F.normalize(src.float(), dim=-1) @ F.normalize(tgt.float(), dim=-1).T / temperature
        if n == 0:
            return logits.sum()  # 0, still attached to the graph
        labels = torch.arange(n, device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class AlignmentLoss(nn.Module):
    """Eq. 1 on a batch from `AlignedPairCollator`; returns `{"loss", "align_loss", "anchor_loss"}` and
    `num_links` (an int: the links the pull term used, 0 when truncation removed them all).

    With `align_objective="contrastive"` the pull term is `info_nce` over the batch's word links, with
    the same pooled vectors (source from f0 with `pull_target="frozen"`, as the l2 pull). CLS<->CLS and
    SEP<->SEP links (`link_special_tokens`) are left out of it: every sentence's CLS (and SEP) sits at
    the same position and they are near copies of each other, so as candidates they would ask the model
    to tell one sentence's CLS from another's (sentence-level contrast, not word alignment) and as
    positives they are trivially matched. They stay in the anchor term, as with l2. Under several
    processes the candidates are each process's own batch (nothing is gathered across ranks).

    Defaults are those of `AlignmentLossArguments` (the scripts'). `align_weight` left as None weighs the
    pull term as where the loss is used: 1 in stage 1 (`AdjustTrainer`, Eq. 1) and α = 0.01 in
    `ContinualAlignTrainer` (Eq. 2); the anchor term keeps `anchor_weight` (1) in both, as the paper's code.

    `anchor_model` is f0: kept frozen and in eval mode, never registered as a submodule (so it is
    not saved, not optimised, not wrapped by DDP). Call it under the caller's autocast; the
    distances are taken in fp32."""

    def __init__(self, anchor_model: Optional[nn.Module] = None, pooling: str = _DEFAULTS.pooling,
                 align_layer: int = _DEFAULTS.align_layer, pull_target: str = _DEFAULTS.pull_target,
                 anchor_weight: float = _DEFAULTS.anchor_weight, align_weight: Optional[float] = None,
                 sub_batch_size: Optional[int] = _DEFAULTS.sub_batch_size,
                 align_objective: str = _DEFAULTS.align_objective,
                 align_temperature: float = _DEFAULTS.align_temperature):
        super().__init__()
        # None: the weight where the loss is used, 1 in stage 1 (Eq. 1) and α in ContinualAlignTrainer (Eq. 2).
        self.align_weight_given = align_weight is not None
        align_weight = STAGE1_ALIGN_WEIGHT if align_weight is None else align_weight
        AlignmentLossArguments(pooling=pooling, pull_target=pull_target, sub_batch_size=sub_batch_size,
                               align_objective=align_objective, align_temperature=align_temperature)  # validates
        self.sub_batch_size = sub_batch_size
        self.align_objective, self.align_temperature = align_objective, align_temperature
        if anchor_model is None and (anchor_weight != 0 or pull_target == "frozen"):
            raise ValueError("the anchor term and --pull_target frozen need the original model (anchor_model)")
        self.pooling, self.align_layer, self.pull_target = pooling, align_layer, pull_target
        self.anchor_weight, self.align_weight = anchor_weight, align_weight
        self._anchor = [anchor_model]  # a list hides it from nn.Module registration
        if anchor_model is not None:
            anchor_model.eval().requires_grad_(False)

    @classmethod
    def from_args(cls, args: AlignmentLossArguments, anchor_model=None, align_weight: float = STAGE1_ALIGN_WEIGHT):
        return cls(anchor_model, args.pooling, args.align_layer, args.pull_target, args.anchor_weight, align_weight,
                   sub_batch_size=getattr(args, "sub_batch_size", None),
                   align_objective=getattr(args, "align_objective", "l2"),
                   align_temperature=getattr(args, "align_temperature", 0.1))

    @property
    def anchor_model(self):
        return self._anchor[0]

    def _anchor_vectors(self, batch, device):
        anchor = self.anchor_model
        if next(anchor.parameters()).device != device:
            anchor.to(device)
        with torch.no_grad():
            return word_vectors(encoder_of(anchor), batch, "src", self.align_layer, self.pooling)

    def forward(self, encoder: nn.Module, batch: Dict) -> Dict[str, torch.Tensor]:
        """`encoder` maps (input_ids, attention_mask) to hidden states: a bare `AutoModel`, possibly
        DDP-wrapped (call the wrapper, so gradients are synchronised), or `encoder_of(task_model)`."""
        src, tgt = pair_word_vectors(encoder, batch, self.align_layer, self.pooling)
        need_f0 = self.anchor_weight != 0 or self.pull_target == "frozen"
        src0 = self._anchor_vectors(batch, src.device) if need_f0 else None
        pull_to = src0 if self.pull_target == "frozen" else src
        link_group = slot_group = None
        num_groups = 1
        if self.sub_batch_size:  # the paper's sum over sub-batches of consecutive sentence pairs
            num_groups = -(-batch["src_input_ids"].shape[0] // self.sub_batch_size)
            link_group = batch["link_sentence"] // self.sub_batch_size
            slot_group = batch["src_slot_sentence"] // self.sub_batch_size
        src_links, tgt_links = batch["src_link_slots"], batch["tgt_link_slots"]
        if self.align_objective == "contrastive":
            if "word_links" in batch:  # CLS/SEP links out (see the class docstring); an index, not a mask: no sync
                src_links, tgt_links = src_links[batch["word_links"]], tgt_links[batch["word_links"]]
            align = info_nce(pull_to[src_links], tgt[tgt_links], self.align_temperature)
        else:
            align = grouped_mse(tgt[tgt_links], pull_to[src_links], link_group, num_groups)
        anchor = grouped_mse(src, src0, slot_group, num_groups) if src0 is not None else src.new_zeros(())
        loss = self.align_weight * align + self.anchor_weight * anchor
        return {"loss": loss, "align_loss": align.detach(), "anchor_loss": anchor.detach(),
                "num_links": int(src_links.shape[0])}
