"""Sentence-level alignment at any layer (issue 19.2), after mid-align (Liu & Niehues, ACL 2025).

Each side's tokens at `--align_layer` are pooled into one sentence vector (mean over non-padding tokens, or
the last non-padding token for decoders), and the pull term of Eq. 1 becomes an InfoNCE over the batch's
sentence pairs: logits_ij = cos(t_i, s_j) / τ, cross-entropy with the diagonal as the label. As in
mid-align, one direction by default: each non-English sentence t_i picks its English translation among the
batch's English sentences s_j (its `LogSoftmax(0)` over the English side; see docs/realignment.md);
`--sentence_symmetric` averages in the other direction. The anchor term is unchanged: English word vectors
at the same layer against f0's.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from hf_xladjust.alignment.loss import (
    AlignmentLoss,
    AlignmentLossArguments,
    _pad_to,
    encoder_of,
    grouped_mse,
    hidden_layer,
    pair_hidden_states,
    pool_words,
)
from hf_xladjust.errors import InputError

ALIGN_LEVELS = ("word", "sentence")
SENTENCE_POOLINGS = ("mean", "last")


@dataclass
class SentenceAlignmentArguments:
    """Word-level pull (the paper's) or sentence-level InfoNCE (mid-align's) at --align_layer."""

    align_level: str = field(
        default="word",
        metadata={"help": "word: the paper's pull over aligned words; sentence: InfoNCE over the batch's pooled "
                          "sentence pairs (mid-align), temperature --align_temperature (0.1, as mid-align's runs). "
                          "The anchor term stays word-level.",
                  "choices": list(ALIGN_LEVELS)},
    )
    sentence_pooling: str = field(
        default="mean",
        metadata={"help": "Tokens -> sentence vector: mean over non-padding tokens (mid-align) or last "
                          "(the last non-padding token, for decoders).",
                  "choices": list(SENTENCE_POOLINGS)},
    )
    sentence_symmetric: bool = field(
        default=False,
        metadata={"help": "Average both directions of the sentence InfoNCE; default one direction as mid-align "
                          "(each non-English sentence against the batch's English sentences)."},
    )

    def __post_init__(self):
        if self.align_level not in ALIGN_LEVELS:
            raise InputError(f"--align_level must be one of {ALIGN_LEVELS}, got {self.align_level!r}")
        if self.sentence_pooling not in SENTENCE_POOLINGS:
            raise InputError(f"--sentence_pooling must be one of {SENTENCE_POOLINGS}, got {self.sentence_pooling!r}")


def pool_sentences(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """Sentence vectors (B, H) from token vectors (B, L, H): the mean over tokens whose mask is 1, or the
    last such token (with either padding side)."""
    if pooling == "mean":
        mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
    if pooling != "last":
        raise ValueError(f"unknown sentence pooling {pooling!r}; expected one of {SENTENCE_POOLINGS}")
    positions = torch.arange(hidden.shape[1], device=hidden.device)
    last = (positions * attention_mask.to(positions.dtype)).amax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def sentence_info_nce(query: torch.Tensor, candidates: torch.Tensor, temperature: float,
                      symmetric: bool = False) -> torch.Tensor:
    """InfoNCE of B sentence pairs: logits_ij = cos(query_i, candidates_j) / τ, cross-entropy of the diagonal
    averaged over the B queries; `symmetric` averages it with the candidates -> queries direction. fp32 with
    autocast off; 0 for one pair (no negatives)."""
    with torch.autocast(device_type=query.device.type, enabled=False):
        logits = F.normalize(query.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T / temperature
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss = F.cross_entropy(logits, labels)
        if symmetric:
            loss = (loss + F.cross_entropy(logits.T, labels)) / 2
        return loss


class SentenceAlignmentLoss(AlignmentLoss):
    """Eq. 1 with a sentence-level pull: `sentence_info_nce(non-English, English)` on pooled sentence vectors
    at `align_layer` (English from f0 with `pull_target="frozen"`), plus the word-level anchor term of
    `AlignmentLoss`. Returns the same keys; `num_links` is the number of sentence pairs."""

    def __init__(self, anchor_model: Optional[nn.Module] = None, align_layer: int = -1,
                 pull_target: str = "current", anchor_weight: float = 1.0, align_weight: float = 1.0,
                 temperature: float = 0.1, word_pooling: str = "mean", sentence_pooling: str = "mean",
                 symmetric: bool = False):
        super().__init__(anchor_model, pooling=word_pooling, align_layer=align_layer, pull_target=pull_target,
                         anchor_weight=anchor_weight, align_weight=align_weight, align_temperature=temperature)
        SentenceAlignmentArguments(align_level="sentence", sentence_pooling=sentence_pooling)  # validates
        self.sentence_pooling, self.symmetric = sentence_pooling, symmetric

    def _anchor_states(self, batch, device):
        """f0's English word vectors and sentence vectors at the layer (no gradient)."""
        anchor = self.anchor_model
        if next(anchor.parameters()).device != device:
            anchor.to(device)
        with torch.no_grad():
            hidden = hidden_layer(encoder_of(anchor), batch["src_input_ids"], batch["src_attention_mask"],
                                  self.align_layer).float()
        words = pool_words(hidden, batch["src_token_slot"], batch["src_num_slots"], self.pooling)
        return words, pool_sentences(hidden, batch["src_attention_mask"], self.sentence_pooling)

    def forward(self, encoder: nn.Module, batch: Dict) -> Dict[str, torch.Tensor]:
        src_hidden, tgt_hidden = pair_hidden_states(encoder, batch, self.align_layer)
        length = src_hidden.shape[1]
        src_mask = _pad_to(batch["src_attention_mask"], length)
        tgt_mask = _pad_to(batch["tgt_attention_mask"], length)
        src_sent = pool_sentences(src_hidden, src_mask, self.sentence_pooling)
        tgt_sent = pool_sentences(tgt_hidden, tgt_mask, self.sentence_pooling)
        need_f0 = self.anchor_weight != 0 or self.pull_target == "frozen"
        src0_words, src0_sent = self._anchor_states(batch, src_hidden.device) if need_f0 else (None, None)
        pull_to = src0_sent if self.pull_target == "frozen" else src_sent
        align = sentence_info_nce(tgt_sent, pull_to, self.align_temperature, self.symmetric)
        if src0_words is not None:
            src_words = pool_words(src_hidden, _pad_to(batch["src_token_slot"], length, value=-1),
                                   batch["src_num_slots"], self.pooling)
            anchor = grouped_mse(src_words, src0_words)
        else:
            anchor = src_hidden.new_zeros(())
        loss = self.align_weight * align + self.anchor_weight * anchor
        return {"loss": loss, "align_loss": align.detach(), "anchor_loss": anchor.detach(),
                "num_links": int(src_sent.shape[0])}


def check_sentence_options(loss_args: AlignmentLossArguments, sentence_args: SentenceAlignmentArguments) -> None:
    """One-line errors for loss options that contradict --align_level sentence (call it before the data)."""
    if sentence_args.align_level == "sentence" and loss_args.sub_batch_size:
        raise InputError("--sub_batch_size is the paper's word-level loop; --align_level sentence takes its "
                         "candidates from the whole batch (drop --sub_batch_size)")


def build_alignment_loss(loss_args: AlignmentLossArguments, sentence_args: SentenceAlignmentArguments,
                         anchor_model=None, align_weight: float = 1.0) -> AlignmentLoss:
    """The loss the arguments ask for: `AlignmentLoss` (word level) or `SentenceAlignmentLoss`."""
    check_sentence_options(loss_args, sentence_args)
    if sentence_args.align_level == "word":
        return AlignmentLoss.from_args(loss_args, anchor_model=anchor_model, align_weight=align_weight)
    return SentenceAlignmentLoss(anchor_model, align_layer=loss_args.align_layer,
                                 pull_target=loss_args.pull_target, anchor_weight=loss_args.anchor_weight,
                                 align_weight=align_weight, temperature=loss_args.align_temperature,
                                 word_pooling=loss_args.pooling, sentence_pooling=sentence_args.sentence_pooling,
                                 symmetric=sentence_args.sentence_symmetric)
