"""Do two checkouts adjust to the same weights? 5 steps of run_adjust.py on a tiny BERT (WordPiece) and a tiny
XLM-R (unigram trained on the fly), CPU, seed 0, with and without truncation, Pharaoh links (no aligner noise).

    python benchmarks/adjust_weights_identity.py run OLD_CHECKOUT /tmp/w/old
    python benchmarks/adjust_weights_identity.py run NEW_CHECKOUT /tmp/w/new
    python benchmarks/adjust_weights_identity.py compare /tmp/w/old /tmp/w/new

Used for the running-text word mapping (issue 16): main before and after gave bit-identical weights.
The test helpers come from this checkout's tests/conftest.py; the models are built once and reused."""
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import FIXTURES, build_tiny_model, fixture_lines  # noqa: E402

MODELS = Path("/tmp/adjust_weights_identity/models")


def build_xlmr(out_dir, vocab_size=300, hidden=32, layers=2, max_positions=64):
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers.models import Unigram
    from transformers import XLMRobertaConfig, XLMRobertaModel, XLMRobertaTokenizerFast

    tok = Tokenizer(Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                      shrinking_factor=0.75, n_sub_iterations=2)
    text = [line for lang in ("en", "es", "ru", "vi", "hi") for line in fixture_lines(lang)]
    tok.train_from_iterator(text, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tokenizer = XLMRobertaTokenizerFast(tokenizer_object=tok, model_max_length=max_positions, bos_token="<s>",
                                        eos_token="</s>", cls_token="<s>", sep_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", mask_token="<mask>")
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                              num_attention_heads=2, intermediate_size=2 * hidden,
                              max_position_embeddings=max_positions + 2, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    XLMRobertaModel(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)


def run(wt: Path, outdir: Path):
    MODELS.mkdir(parents=True, exist_ok=True)
    models = {"bert": MODELS / "bert", "xlmr": MODELS / "xlmr"}
    if not (models["bert"] / "config.json").exists():
        build_tiny_model(models["bert"])
    if not (models["xlmr"] / "config.json").exists():
        build_xlmr(models["xlmr"])
    al = MODELS / "diag.txt"
    al.write_text("\n".join(" ".join(f"{k}-{k}" for k in range(min(len(a.split()), len(b.split()))))
                            for a, b in zip(fixture_lines("en"), fixture_lines("es"))) + "\n")
    env = {**os.environ, "PYTHONPATH": str(wt), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline"}
    outdir.mkdir(parents=True, exist_ok=True)
    for name, model in models.items():
        for trunc in (None, 9):
            run = f"{name}{'_trunc' if trunc else ''}"
            out = outdir / run
            cmd = [sys.executable, str(wt / "run_adjust.py"), "--model_name_or_path", str(model),
                   "--source_file", str(FIXTURES / "en.txt"), "--target_file", str(FIXTURES / "es.txt"),
                   "--target_lang", "es", "--aligner", "pharaoh", "--alignment_file", str(al),
                   "--output_dir", str(out), "--overwrite_output_dir", "true", "--max_steps", "5",
                   "--per_device_train_batch_size", "4", "--seed", "0", "--learning_rate", "1e-3",
                   "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--use_cpu",
                   "--disable_tqdm", "true"] + (["--align_max_length", str(trunc)] if trunc else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=wt)
            assert proc.returncode == 0, proc.stderr[-3000:]
            print(run, "ok", (out / "alignment_stats.json").read_text().replace("\n", " ")[:400])



def compare(a: Path, b: Path):
    from safetensors.torch import load_file

    for run in sorted(p.name for p in a.iterdir()):
        x, y = load_file(a / run / "model.safetensors"), load_file(b / run / "model.safetensors")
        assert x.keys() == y.keys()
        same = all((x[k] == y[k]).all() for k in x)
        diff = max((x[k].float() - y[k].float()).abs().max().item() for k in x)
        print(f"{run}: {len(x)} tensors, bit-identical={same}, max abs diff={diff:.3g}")


if __name__ == "__main__":
    mode, first, second = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    run(first, second) if mode == "run" else compare(first, second)
