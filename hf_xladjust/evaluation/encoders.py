"""What the evaluators accept as a model: an HF model (bare encoder or task model) or a sentence-transformers
`SentenceTransformer`, whose first module holds the HF model and its tokenizer.

Duck-typed, so that sentence-transformers stays an optional dependency."""
from typing import Any, Optional, Tuple

from torch import nn


def hf_model_and_tokenizer(model: nn.Module) -> Tuple[nn.Module, Optional[Any]]:
    """(the HF model, its tokenizer) of a `SentenceTransformer` (`model[0].auto_model`, `model[0].tokenizer`);
    `(model, None)` for anything else. Only the transformer is used: the evaluators pool every layer
    themselves, so the SentenceTransformer's Pooling/Normalize modules play no part."""
    if isinstance(model, nn.Sequential) and len(model) > 0:
        first = model[0]
        if hasattr(first, "auto_model"):
            return first.auto_model, getattr(first, "tokenizer", None)
        raise ValueError(f"a {type(model).__name__} whose first module is a {type(first).__name__}: the evaluators "
                         "need a sentence-transformers Transformer module first (its auto_model and tokenizer)")
    return model, None
