"""Every run_*.py ends as the HF examples do: a README.md model card in --output_dir (the Trainer's card plus our
section, read back from run_args.json and alignment_stats.json), and with --push_to_hub a push that, without
network, is one line after everything has been saved."""
import json
import os
import subprocess
import sys

import pytest
from conftest import FIXTURES
from test_run_adjust import OUTPUT_FILES, ROOT, diagonal_pharaoh

from hf_xladjust.errors import InputError
from hf_xladjust.model_card import CITATION

COMMON = ("--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--save_strategy", "no")


@pytest.fixture(scope="module")
def adjusted(tmp_path_factory, tiny_model_dir):
    """run_adjust.py with --push_to_hub, offline: (output folder, finished process)."""
    tmp = tmp_path_factory.mktemp("adjust-card")
    out = tmp / "adjusted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, str(ROOT / "run_adjust.py"), "--model_name_or_path", tiny_model_dir,
                           "--source_file", str(FIXTURES / "en.txt"), "--target_file", str(FIXTURES / "es.txt"),
                           "--target_lang", "es", "--aligner", "pharaoh",
                           "--alignment_file", str(diagonal_pharaoh(tmp / "al.txt")), "--output_dir", str(out),
                           "--per_device_train_batch_size", "4", "--max_steps", "2", "--seed", "7",
                           "--push_to_hub", "--hub_model_id", "someone/tiny-adjusted", *COMMON],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    return out, proc


def test_run_adjust_card_and_offline_push(adjusted):
    out, proc = adjusted
    # the push is the last step: everything is saved, the card too, then ONE line and exit status 1
    assert proc.returncode == 1, proc.stderr[-3000:]
    for name in (*OUTPUT_FILES, "README.md", "all_results.json"):
        assert (out / name).is_file(), name
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    push_lines = [ln for ln in output.splitlines() if "push" in ln.lower()]
    assert push_lines == [proc.stderr.strip().splitlines()[-1]]
    assert push_lines[0].startswith(f"run_adjust.py: error: {out}: --push_to_hub: pushing to someone/tiny-adjusted "
                                    "failed (OfflineModeIsEnabled")
    assert f"hf upload someone/tiny-adjusted {out}" in push_lines[0]
    card = (out / "README.md").read_text()
    stats = json.loads((out / "alignment_stats.json").read_text())
    # the Trainer's card (metadata, hyper-parameters) ...
    assert card.startswith("---\nlibrary_name: transformers\nlanguage:\n- en\n- es\n")
    assert "- hf-xladjust\n" in card and "- generated_from_trainer\n" in card and "- seed: 7\n" in card
    assert "base_model:" not in card  # a local folder is not a Hub id: named in our section instead
    assert "trained from scratch" not in card
    # ... then ours, with the counts of alignment_stats.json, the weights, the seed and both citations
    assert f"{stats['sentences_kept']} sentence pairs and {stats['links_kept']} word links kept of " \
           f"{stats['sentences_in_corpus']} sentence pairs in the corpus" in card
    assert f"{stats['links_special_tokens']} CLS/SEP links added" in card
    assert "× α = 1.0 + anchor term" in card and ") × 1.0; word vectors: mean of subwords at hidden layer -1" in card
    assert "- **Seed**: 7" in card and "- **Saved**: the encoder alone (`BertModel`)" in card
    assert card.rstrip().endswith(CITATION) and "Efimov, Pavel and Boytsov, Leonid" in card
    assert "Cao, Steven and Kitaev, Nikita and Klein, Dan" in card


def test_glue_card_from_an_adjusted_model_with_continual_alignment(adjusted, tmp_path, tiny_model_dir, monkeypatch):
    from test_xnli import parallel_tsvs

    import run_glue_xl

    base, _ = adjusted
    data = tmp_path / "data"
    out = tmp_path / "xnli"
    monkeypatch.setattr(sys, "argv", [
        "run_glue_xl.py", "--model_name_or_path", str(base),
        "--train_file", parallel_tsvs(data, ("en",), n=8, prefix="dev").format(lang="en"),
        "--test_file_pattern", parallel_tsvs(data, ("en", "es"), n=4), "--eval_languages", "es", "--do_train",
        "--do_predict", "--per_device_train_batch_size", "8", "--max_steps", "1", "--seed", "5",
        "--aligned_pairs", str(base / "aligned_pairs.jsonl"), "--align_batch_size", "4", "--output_dir", str(out),
        *COMMON])
    run_glue_xl.main()
    card = (out / "README.md").read_text()
    stats = json.loads((base / "alignment_stats.json").read_text())
    assert "language:\n- en\n- es\n" in card and "This model was trained from the local checkpoint" in card
    assert f"- **The base model is an adjusted model** (`{base}`, run_adjust.py):" in card
    assert f"  - **Base model**: `{tiny_model_dir}`" in card and "  - **Seed**: 7" in card
    assert f"{stats['sentences_kept']} sentence pairs and {stats['links_kept']} word links kept" in card
    words = sum(len(p["links"]) for p in map(json.loads, (base / "aligned_pairs.jsonl").read_text().splitlines()))
    assert f"  - pool: {stats['sentences_kept']} sentence pairs, {words} word links" in card
    # Eq. 2 with the paper's α and f0 resolved to the model the adjustment started from
    assert f"× α = 0.01 + anchor term (English words near the original model f0 = `{tiny_model_dir}`) × 1.0" in card
    assert "- **Seed**: 5" in card and card.rstrip().endswith(CITATION)


def test_ner_push_offline_is_one_error_after_saving(tmp_path, tiny_model_dir, monkeypatch):
    from test_ner import NER, train_file_of

    import run_ner_xl

    out = tmp_path / "ner"
    monkeypatch.setattr(sys, "argv", [
        "run_ner_xl.py", "--model_name_or_path", tiny_model_dir, "--train_file", str(train_file_of(tmp_path, 8)),
        "--test_file_pattern", str(NER / "test-{lang}.nolabels.tsv"), "--eval_languages", "ru", "--do_train",
        "--do_predict", "--max_steps", "1", "--max_seq_length", "32", "--output_dir", str(out), "--push_to_hub",
        *COMMON])
    with pytest.raises(InputError, match=r"--push_to_hub: pushing to ner failed \(OfflineModeIsEnabled") as err:
        run_ner_xl.main()
    assert "\n" not in str(err.value)
    for name in ("README.md", "model.safetensors", "config.json", "all_results.json", "run_args.json",
                 "predictions_test_ru.jsonl"):
        assert (out / name).is_file(), name
    card = (out / "README.md").read_text()
    assert "language:\n- en\n- ru\n" in card and "- **Data**:" in card and card.rstrip().endswith(CITATION)


def test_qa_and_xsr_cards(tmp_path, tiny_model_dir, monkeypatch):
    from test_qa import QA, WINDOW
    from test_xsr import write_tatoeba

    import run_qa_xl
    import run_xsr

    out = tmp_path / "qa"
    monkeypatch.setattr(sys, "argv", [
        "run_qa_xl.py", "--model_name_or_path", tiny_model_dir, "--train_file", str(QA / "train.json"),
        "--xquad_dir", str(QA), "--eval_languages", "es", "--do_train", "--do_predict", "--max_steps", "1",
        "--output_dir", str(out), *WINDOW, *COMMON])
    run_qa_xl.main()
    card = (out / "README.md").read_text()
    assert "## Cross-lingual adjustment (hf-xladjust)" in card and "- **Continual alignment**" not in card
    assert "### Training hyperparameters" in card and card.rstrip().endswith(CITATION)

    out = tmp_path / "xsr"
    monkeypatch.setattr(sys, "argv", ["run_xsr.py", "--model_name_or_path", tiny_model_dir, "--tatoeba_dir",
                                      str(write_tatoeba(tmp_path / "tatoeba", ("es",))), "--languages", "es",
                                      "--output_dir", str(out)])
    run_xsr.main()
    results = json.loads((out / "all_results.json").read_text())
    card = (out / "README.md").read_text()
    assert card.startswith("---\ntags:\n- hf-xladjust\n- cross-lingual-adjustment\nlanguage:\n- en\n- es\n---\n")
    assert f"Evaluation of `{tiny_model_dir}` on Tatoeba." in card
    assert f"- xsr_es_mrr: {round(results['xsr_es_mrr'], 4)}\n" in card and "mrr_layer" not in card
    assert f"- xsr_es_acc1: {round(results['xsr_es_acc1'], 4)}\n" in card
    assert f"- **Model evaluated**: `{tiny_model_dir}`" in card and "Seed" not in card
    assert card.rstrip().endswith(CITATION)


class FakeHub:
    """Stands in for the Hub API the Trainer calls (`transformers.trainer.hf_api()`): records the repository
    created and what each upload would send."""

    def __init__(self):
        self.created, self.uploads = [], []

    def create_repo(self, repo_id, **kwargs):
        self.created.append(repo_id)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, **kwargs):
        files = sorted(p for p in os.listdir(folder_path) if not p.startswith("_"))
        with open(os.path.join(folder_path, "README.md"), encoding="utf-8") as f:
            self.uploads.append({"repo_id": repo_id, "files": files, "card": f.read(), **kwargs})


def test_push_uploads_the_finished_folder_with_our_card(tmp_path, tiny_model_dir, monkeypatch):
    import transformers.trainer

    import run_adjust

    hub = FakeHub()
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    out = tmp_path / "adjusted"
    monkeypatch.setattr(sys, "argv", [
        "run_adjust.py", "--model_name_or_path", tiny_model_dir, "--source_file", str(FIXTURES / "en.txt"),
        "--target_file", str(FIXTURES / "es.txt"), "--target_lang", "es", "--aligner", "pharaoh",
        "--alignment_file", str(diagonal_pharaoh(tmp_path / "al.txt")), "--output_dir", str(out),
        "--per_device_train_batch_size", "4", "--max_steps", "1", "--push_to_hub", "--hub_model_id",
        "someone/adj", *COMMON])
    run_adjust.main()
    # the repository is created when the Trainer is built; one upload, at the end, of the finished folder
    assert hub.created == ["someone/adj"] and len(hub.uploads) == 1
    upload = hub.uploads[0]
    assert upload["repo_id"] == "someone/adj" and upload["commit_message"] == "End of training"
    for name in (*OUTPUT_FILES, "README.md", "all_results.json"):
        assert name in upload["files"], name
    # push_to_hub rewrote the card: ours is still in it, once
    assert upload["card"] == (out / "README.md").read_text()
    assert upload["card"].count("## Cross-lingual adjustment (hf-xladjust)") == 1
    assert upload["card"].rstrip().endswith(CITATION) and "- **Seed**: 42" in upload["card"]
