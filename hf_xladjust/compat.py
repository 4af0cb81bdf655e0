"""What the supported transformers releases (4.46+ and 5.x) do differently, in one place.

Gradient accumulation. `Trainer.training_step` divides each micro-batch's loss by the accumulation
steps before `backward` under rules that changed several times (read from each release's trainer.py):

    4.46.0 - 4.47.x   never (the loss is divided for the logged value only)
    4.48.0            when `num_items_in_batch` is None
    4.48.1 - 4.52.x   unless `model_accepts_loss_kwargs` or `compute_loss_func`
    4.53 - 5.x        unless (`model_accepts_loss_kwargs` and `num_items_in_batch` is given) or `compute_loss_func`
    5.x with `Trainer.loss_is_scaled_for_ga`: that flag when set, else the rule above

The flag is detected on the class; the releases before it can only be told apart by their version.
`ga_corrected_loss` makes the gradient right on all of them; on a Trainer with the flag it is a no-op.

Warm-up. Up to 4.x a ratio of the steps is `warmup_ratio` (and `warmup_steps` an int); 5.x has no
`warmup_ratio` and reads a float `warmup_steps` in [0, 1) as that ratio. `apply_warmup_ratio` turns a
`warmup_ratio` field of our own argument classes into whichever the installed release reads.

Resuming. torch 2.6+ loads with `weights_only=True` by default, and the Trainer's RNG checkpoint holds
numpy arrays; transformers < 4.47 does not allowlist them (`rng_state_load_context`).
"""
import contextlib
import dataclasses

import numpy as np
import torch
import transformers
from packaging import version
from transformers import Trainer, TrainingArguments

_TF_VERSION = version.parse(version.parse(transformers.__version__).base_version)
TRAINER_HAS_GA_FLAG = hasattr(Trainer, "loss_is_scaled_for_ga")
# Whether TrainingArguments reads `warmup_ratio` itself (4.x); 5.x takes the ratio as a float warmup_steps.
TRAINING_ARGS_READ_WARMUP_RATIO = "warmup_ratio" in {f.name for f in dataclasses.fields(TrainingArguments)}


def apply_warmup_ratio(args) -> None:
    """Make `args.warmup_ratio` (a field of our argument classes on every release) take effect: on releases
    without the field in `TrainingArguments` (5.x), set `warmup_steps` to the ratio, as a float < 1, unless
    an explicit `warmup_steps` was given (which wins, as on 4.x). Call before `TrainingArguments.__post_init__`."""
    ratio = getattr(args, "warmup_ratio", 0.0) or 0.0
    if ratio < 0:
        raise ValueError(f"--warmup_ratio must be >= 0, got {ratio}")
    if TRAINING_ARGS_READ_WARMUP_RATIO or ratio == 0 or args.warmup_steps:
        return
    if ratio >= 1:
        raise ValueError(f"--warmup_ratio {ratio}: transformers {transformers.__version__} reads a warm-up ratio "
                         f"only below 1 (as a float --warmup_steps); give --warmup_steps N instead")
    args.warmup_steps = float(ratio)


def accumulation_steps(trainer) -> int:
    """Micro-batches in the current optimisation step (`current_gradient_accumulation_steps` from 4.5x on)."""
    return getattr(trainer, "current_gradient_accumulation_steps", None) or trainer.args.gradient_accumulation_steps


def trainer_divides_by_ga(trainer, num_items_in_batch) -> bool:
    """Whether the installed `Trainer.training_step` divides the loss `compute_loss` returns by the
    accumulation steps before `backward` (the table in the module docstring)."""
    accepts = bool(trainer.model_accepts_loss_kwargs)
    loss_func = getattr(trainer, "compute_loss_func", None) is not None
    if TRAINER_HAS_GA_FLAG:
        if trainer.loss_is_scaled_for_ga is not None:
            return not trainer.loss_is_scaled_for_ga
    elif _TF_VERSION < version.parse("4.48.0"):
        return False
    elif _TF_VERSION < version.parse("4.48.1"):
        return num_items_in_batch is None
    elif _TF_VERSION < version.parse("4.53.0"):
        return not (accepts or loss_func)
    return not ((accepts and num_items_in_batch is not None) or loss_func)


def loss_is_normalised(trainer, num_items_in_batch) -> bool:
    """Whether the task loss is already normalised over the whole accumulated batch: as the trainer's
    `loss_is_scaled_for_ga` says when set (an attribute of our own on releases whose Trainer lacks it),
    otherwise when `num_items_in_batch` reached the model or `compute_loss_func`."""
    flag = getattr(trainer, "loss_is_scaled_for_ga", None)
    if flag is not None:
        return bool(flag)
    return bool((trainer.model_accepts_loss_kwargs and num_items_in_batch is not None)
                or getattr(trainer, "compute_loss_func", None) is not None)


def ga_corrected_loss(trainer, loss: torch.Tensor, num_items_in_batch) -> torch.Tensor:
    """The training loss to hand to `training_step` so that, after the installed Trainer's own division
    (if any), a per-batch mean ends up divided by the accumulation steps and a normalised loss does not.
    Only the gradient is rescaled: the value stays what the Trainer would log. Returns `loss` itself
    whenever the Trainer already does the right thing (always on a Trainer with `loss_is_scaled_for_ga`)."""
    wanted = not loss_is_normalised(trainer, num_items_in_batch)
    if trainer_divides_by_ga(trainer, num_items_in_batch) == wanted:
        return loss
    steps = accumulation_steps(trainer)
    if steps == 1:
        return loss
    factor = 1.0 / steps if wanted else float(steps)
    return loss * factor + (loss * (1.0 - factor)).detach()


def rng_state_load_context():
    """Context for `Trainer._load_rng_state`: allowlists numpy's arrays for `torch.load(weights_only=True)`
    where the Trainer does not do it itself (transformers < 4.47) and torch has `safe_globals` (2.5+)."""
    from transformers import trainer_pt_utils

    if hasattr(trainer_pt_utils, "safe_globals") or not hasattr(torch.serialization, "safe_globals"):
        return contextlib.nullcontext()
    np_core = np._core if hasattr(np, "_core") else np.core
    allow = [np_core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    return torch.serialization.safe_globals(allow)
