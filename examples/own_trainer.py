#!/usr/bin/env python
"""Your own HF fine-tuning script, with continual cross-lingual alignment added: the lines marked `# +`.

    python examples/own_trainer.py MODEL PARALLEL_FILE [--output_dir DIR] [--max_steps N]

MODEL is an encoder folder or Hub name (an adjusted one from run_adjust.py too); PARALLEL_FILE has one
`English ||| other language` sentence pair a line. Each optimisation step adds α·pull + anchor over 16
aligned sentence pairs to your loss (α 0.01, anchor weight 1, f0 the original model: the paper's and the
scripts' defaults). Your Trainer subclass keeps its compute_loss; it need not call super().
"""
import argparse

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from hf_xladjust import ContinualAlignTrainer, build_aligned_pairs  # +

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("model")
parser.add_argument("parallel_file")
parser.add_argument("--output_dir", default="out/own-trainer")
parser.add_argument("--max_steps", type=int, default=-1)
args = parser.parse_args()

tokenizer = AutoTokenizer.from_pretrained(args.model)
model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
texts = ["the river is calm", "the film was good", "the food is bad", "the city is loud"] * 4
train = Dataset.from_dict({"text": texts, "label": [1, 1, 0, 0] * 4})
train = train.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=64), batched=True)


class MyTrainer(Trainer):
    """The user's own loss (class weights), written as the HF docs do: no super().compute_loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weight = torch.tensor([1.0, 2.0], device=outputs.logits.device)
        loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=weight)
        return (loss, outputs) if return_outputs else loss


class MyAlignedTrainer(MyTrainer, ContinualAlignTrainer):  # +
    pass  # +


pairs, stats = build_aligned_pairs(train_file=args.parallel_file)  # + word-aligned (eflomal), the paper's filters
training_args = TrainingArguments(args.output_dir, num_train_epochs=2, max_steps=args.max_steps,
                                  per_device_train_batch_size=8, logging_steps=1, report_to=[])
trainer = MyAlignedTrainer(model=model, args=training_args, train_dataset=train,  # + (was MyTrainer)
                           processing_class=tokenizer, align_dataset=pairs)  # +
trainer.train()
trainer.save_model()
trainer.save_state()
print(f"aligned {stats['sentences_kept']} sentence pairs; last log: {trainer.state.log_history[-2]}")
