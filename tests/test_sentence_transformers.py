"""The evaluators score a sentence-transformers `SentenceTransformer` (its transformer and tokenizer) exactly
as the plain HF model of the same folder."""
import pytest
import torch
from conftest import fixture_lines
from torch import nn
from transformers import AutoModel, AutoTokenizer

from hf_xladjust.alignment.pairs import AlignedPair
from hf_xladjust.evaluation.distances import WordDistanceEvaluator
from hf_xladjust.evaluation.encoders import hf_model_and_tokenizer
from hf_xladjust.evaluation.retrieval import SentenceRetrievalEvaluator

st = pytest.importorskip("sentence_transformers")
try:  # sentence-transformers 6 (sentence_transformers.models is deprecated there)
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
except ImportError:  # 3.x - 5.x
    from sentence_transformers.models import Pooling, Transformer


@pytest.fixture(scope="module")
def wrapped(tiny_model_dir):
    """The tiny folder as a SentenceTransformer built from local modules (no Hub), and as plain HF objects."""
    model = st.SentenceTransformer(modules=[Transformer(tiny_model_dir), Pooling(32, "mean")], device="cpu")
    return model, AutoModel.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_retrieval_scores_a_sentence_transformer_as_its_hf_model(wrapped):
    model, hf_model, tokenizer = wrapped
    sources, targets = fixture_lines("es"), fixture_lines("en")
    # no tokenizer on the evaluator: the SentenceTransformer brings its own, the HF model gets it in the call
    evaluator = SentenceRetrievalEvaluator(sources, targets, name="es", directions=("forward", "reverse"),
                                           batch_size=4)
    plain_vectors = evaluator.embed(hf_model, tokenizer)
    plain = evaluator(hf_model, tokenizer)
    wrapped_vectors = evaluator.embed(model)
    assert torch.equal(wrapped_vectors, plain_vectors)
    assert evaluator(model) == plain
    assert plain["es_mrr"] > 0 and len([k for k in plain if k.startswith("es_mrr_layer")]) == 3
    assert model.encode(["hola"]).shape == (1, 32)


def test_distances_score_a_sentence_transformer_as_its_hf_model(wrapped):
    model, hf_model, tokenizer = wrapped
    pairs = []
    for s, t in zip(fixture_lines("en"), fixture_lines("ru")):
        s, t = s.split(), t.split()
        pairs.append(AlignedPair(s, t, [(i, i) for i in range(min(len(s), len(t)))]))
    evaluator = WordDistanceEvaluator(pairs, seed=0, batch_size=5)
    plain = evaluator(hf_model, tokenizer)
    plain_distances = dict(evaluator.distances)
    assert evaluator(model) == plain
    assert all((evaluator.distances[k] == plain_distances[k]).all() for k in plain_distances)
    assert plain["related_count"] > 0 and 0 < plain["auc_unrelated"] <= 1


def test_unwrapping(wrapped):
    model, hf_model, tokenizer = wrapped
    inner, own = hf_model_and_tokenizer(model)
    assert inner is model[0].auto_model and own is model[0].tokenizer
    assert hf_model_and_tokenizer(hf_model) == (hf_model, None)
    with pytest.raises(ValueError, match="first module is a Linear"):
        hf_model_and_tokenizer(nn.Sequential(nn.Linear(2, 2)))
