"""f0, the original model that the anchor term keeps English word vectors close to."""
import json
import logging
import os
from typing import Optional, Tuple

from transformers import AutoModel, PreTrainedModel

logger = logging.getLogger(__name__)


def load_anchor_model(path: str, device=None, **kwargs) -> PreTrainedModel:
    """f0: the bare encoder at `path` (`AutoModel`), in eval mode, without gradients."""
    model = AutoModel.from_pretrained(path, **kwargs)
    model.eval().requires_grad_(False)
    return model.to(device) if device is not None else model


def resolve_anchor_path(model_name_or_path: str, anchor_model_name_or_path: Optional[str] = None) -> str:
    """f0 is the ORIGINAL model, as in the paper's code: `--anchor_model_name_or_path` if given; otherwise, when the
    model is a run_adjust.py output, the model that adjustment started from (followed back through
    run_args.json); otherwise the model itself."""
    return resolve_anchor(model_name_or_path, anchor_model_name_or_path)[0]


def resolve_anchor(model_name_or_path: str,
                   anchor_model_name_or_path: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """`resolve_anchor_path` and, when f0 was found through run_args.json, the --model_revision that
    adjustment loaded it at (None otherwise: f0 then loads at the run's own revision)."""
    if anchor_model_name_or_path:
        return anchor_model_name_or_path, None
    path, revision, seen = model_name_or_path, None, set()
    while os.path.isfile(os.path.join(path, "run_args.json")) and path not in seen:
        seen.add(path)
        with open(os.path.join(path, "run_args.json"), encoding="utf-8") as f:
            recorded = json.load(f).get("model") or {}
        origin = recorded.get("model_name_or_path")
        if not origin:
            break
        logger.info("Anchor model f0: %s was adjusted from %s", path, origin)
        path, revision = origin, recorded.get("model_revision")
    return path, revision
