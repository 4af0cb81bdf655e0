"""run_adjust.py keeps a checkpoint's masked-LM head: the encoder inside `AutoModelForMaskedLM` is adjusted and
the whole model saved, so `pipeline("fill-mask")` on the output uses the checkpoint's own head;
`--save_encoder_only` saves the bare encoder as before."""
import json

import pytest
import torch
from conftest import FIXTURES, build_tiny_model
from test_run_adjust import diagonal_pharaoh, run_adjust
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM, pipeline

from hf_xladjust.alignment.loss import encoder_of
from hf_xladjust.trainers.adjust import load_model_to_adjust

HEAD = "cls.predictions."


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    """A tiny BertForMaskedLM whose head is not what a fresh initialisation gives (a constant bias, scaled
    transform), saved with its tokenizer: config.architectures == ["BertForMaskedLM"]."""
    base = build_tiny_model(tmp_path_factory.mktemp("tiny-base"))
    model = BertForMaskedLM.from_pretrained(base)
    with torch.no_grad():
        model.cls.predictions.transform.dense.weight.copy_(torch.eye(32) * 0.5 + 0.01)
        model.cls.predictions.transform.dense.bias.fill_(0.25)
        model.cls.predictions.bias.copy_(torch.linspace(-1, 1, model.config.vocab_size))
    out = tmp_path_factory.mktemp("tiny-mlm")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return str(out)


def adjust(mlm_dir, out, tmp_path, *extra):
    run_adjust("--model_name_or_path", mlm_dir, "--source_file", FIXTURES / "en.txt", "--target_file",
               FIXTURES / "es.txt", "--target_lang", "es", "--aligner", "pharaoh",
               "--alignment_file", diagonal_pharaoh(tmp_path / "al.txt"), "--output_dir", out,
               "--learning_rate", "1e-3", "--per_device_train_batch_size", "4", "--max_steps", "3", *extra)


def test_fill_mask_uses_the_checkpoints_head(mlm_dir, tmp_path):
    out = tmp_path / "adjusted"
    adjust(mlm_dir, out, tmp_path)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    original = BertForMaskedLM.from_pretrained(mlm_dir)
    loaded, info = AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]  # nothing newly initialised
    fill = pipeline("fill-mask", model=str(out), device="cpu")
    assert fill.model.state_dict().keys() == original.state_dict().keys()
    adjusted, before = fill.model.state_dict(), original.state_dict()
    for name, value in before.items():
        if name.startswith(HEAD) and "decoder.weight" not in name:  # the head is not trained by the loss
            assert torch.equal(adjusted[name], value), name
    # the decoder is tied to the input embeddings, which the alignment loss does train
    emb = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(adjusted[HEAD + "decoder.weight"], adjusted[emb])
    assert not torch.equal(adjusted[emb], before[emb])
    assert not torch.equal(adjusted["bert.encoder.layer.1.output.dense.weight"],
                           before["bert.encoder.layer.1.output.dense.weight"])
    # fill-mask runs with that head: its top score is the head applied to the adjusted encoder's output
    text = f"el {fill.tokenizer.mask_token} de"
    top = fill(text, top_k=1)[0]
    enc = fill.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        logits = loaded(**enc).logits[0, enc["input_ids"][0].tolist().index(fill.tokenizer.mask_token_id)]
    assert top["token"] == int(logits.argmax()) and top["score"] == pytest.approx(logits.softmax(-1).max().item(),
                                                                                  rel=1e-5)
    # AutoModel still loads it: the same adjusted encoder
    bare = AutoModel.from_pretrained(out)
    assert torch.equal(bare.encoder.layer[1].output.dense.weight, adjusted["bert.encoder.layer.1.output.dense.weight"])


def test_save_encoder_only_keeps_the_bare_encoder(mlm_dir, tmp_path):
    out = tmp_path / "encoder"
    adjust(mlm_dir, out, tmp_path, "--save_encoder_only", "true")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    _, info = AutoModelForMaskedLM.from_pretrained(out, output_loading_info=True)
    assert any(k.startswith(HEAD) for k in info["missing_keys"])  # a fill-mask head would be random


def test_load_model_to_adjust(mlm_dir, tiny_model_dir):
    config = AutoConfig.from_pretrained(mlm_dir)
    whole = load_model_to_adjust(mlm_dir, config)
    assert type(whole).__name__ == "BertForMaskedLM"
    assert type(encoder_of(whole)).__name__ == "BertModel" and encoder_of(whole) is whole.bert
    # f0 is a copy of the encoder alone: no head, no vocabulary projection in the anchor's forward
    assert not any(n.startswith("cls.") for n, _ in encoder_of(whole).named_parameters())
    assert type(load_model_to_adjust(mlm_dir, config, save_encoder_only=True)).__name__ == "BertModel"
    assert type(load_model_to_adjust(tiny_model_dir, AutoConfig.from_pretrained(tiny_model_dir))).__name__ \
        == "BertModel"
