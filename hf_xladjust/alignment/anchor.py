"""f0, the original model that the anchor term keeps English word vectors close to."""
import json
import logging
import os
from typing import Optional

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
    if anchor_model_name_or_path:
        return anchor_model_name_or_path
    path, seen = model_name_or_path, set()
    while os.path.isfile(os.path.join(path, "run_args.json")) and path not in seen:
        seen.add(path)
        with open(os.path.join(path, "run_args.json"), encoding="utf-8") as f:
            origin = (json.load(f).get("model") or {}).get("model_name_or_path")
        if not origin:
            break
        logger.info("Anchor model f0: %s was adjusted from %s", path, origin)
        path = origin
    return path
