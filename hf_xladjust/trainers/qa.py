"""The QA trainer: upstream's `trainer_qa.QuestionAnsweringTrainer` evaluation loop (raw start/end
logits from the evaluation loop, then post-processing into answer texts, then the metric) on top of
`ContinualAlignTrainer`, so that SQuAD fine-tuning can add the continual alignment loss."""
import math
import time

from transformers.trainer_utils import PredictionOutput, speed_metrics

from hf_xladjust.trainers.continual import ContinualAlignTrainer


class QuestionAnsweringTrainer(ContinualAlignTrainer):
    """`evaluate(eval_dataset, eval_examples)` and `predict(dataset, examples)` run the model over the
    windows, call `post_process_function(examples, dataset, (start_logits, end_logits), stage)` to get an
    `EvalPrediction` of answers and references, and `compute_metrics` on that; metric names get the
    `metric_key_prefix`. `eval_examples` may be a dict with the keys of a dict `eval_dataset` (the
    Trainer evaluates each during training as `eval_<name>`). Training is `ContinualAlignTrainer`'s."""

    def __init__(self, *args, eval_examples=None, post_process_function=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_examples = eval_examples
        self.post_process_function = post_process_function

    def _examples_for(self, eval_dataset, eval_examples, metric_key_prefix):
        if eval_examples is not None or not isinstance(self.eval_examples, dict):
            return eval_examples if eval_examples is not None else self.eval_examples
        if isinstance(eval_dataset, str):  # the Trainer evaluating a dict of eval sets by name
            return self.eval_examples[eval_dataset]
        name = metric_key_prefix.split("_", 1)[-1]
        if name in self.eval_examples:
            return self.eval_examples[name]
        raise ValueError(f"no eval_examples for the dataset evaluated as {metric_key_prefix!r}")

    def _logits(self, dataloader, description, ignore_keys, metric_key_prefix, want_predictions):
        # Temporarily disable metric computation: post-processing comes first, metrics after it.
        compute_metrics = self.compute_metrics
        self.compute_metrics = None
        start_time = time.time()
        try:
            output = self.evaluation_loop(
                dataloader,
                description=description,
                # No point gathering the predictions if there are no metrics, otherwise we defer to
                # self.args.prediction_loss_only
                prediction_loss_only=None if want_predictions else True,
                ignore_keys=ignore_keys,
                metric_key_prefix=metric_key_prefix,
            )
        finally:
            self.compute_metrics = compute_metrics
        total_batch_size = self.args.eval_batch_size * self.args.world_size
        if f"{metric_key_prefix}_model_preparation_time" in output.metrics:
            start_time += output.metrics[f"{metric_key_prefix}_model_preparation_time"]
        output.metrics.update(speed_metrics(metric_key_prefix, start_time, num_samples=output.num_samples,
                                            num_steps=math.ceil(output.num_samples / total_batch_size)))
        return output

    def _prefixed(self, metrics, prefix):
        return {(k if k.startswith(f"{prefix}_") else f"{prefix}_{k}"): v for k, v in metrics.items()}

    def evaluate(self, eval_dataset=None, eval_examples=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        override = eval_dataset is not None
        eval_dataset = eval_dataset if override else self.eval_dataset
        if isinstance(eval_dataset, dict):
            metrics = {}
            for name, dataset in eval_dataset.items():
                examples = eval_examples[name] if isinstance(eval_examples, dict) else None
                metrics.update(self.evaluate(eval_dataset=dataset if override else name, eval_examples=examples,
                                             ignore_keys=ignore_keys, metric_key_prefix=f"{metric_key_prefix}_{name}"))
            return metrics
        examples = self._examples_for(eval_dataset, eval_examples, metric_key_prefix)
        dataset = self.eval_dataset[eval_dataset] if isinstance(eval_dataset, str) else eval_dataset
        do_metrics = self.post_process_function is not None and self.compute_metrics is not None
        output = self._logits(self.get_eval_dataloader(eval_dataset), "Evaluation", ignore_keys, metric_key_prefix,
                              do_metrics)
        metrics = dict(output.metrics)
        if do_metrics:
            eval_preds = self.post_process_function(examples, dataset, output.predictions, "eval")
            metrics.update(self._prefixed(self.compute_metrics(eval_preds), metric_key_prefix))
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def predict(self, predict_dataset, predict_examples=None, ignore_keys=None, metric_key_prefix: str = "test"):
        """As upstream: a `PredictionOutput` whose `predictions` are the post-processed answers and
        `label_ids` the references (raw logits when there is no post-processing)."""
        output = self._logits(self.get_test_dataloader(predict_dataset), "Prediction", ignore_keys,
                              metric_key_prefix, True)
        if self.post_process_function is None:
            return PredictionOutput(predictions=output.predictions, label_ids=output.label_ids,
                                    metrics=output.metrics)
        predictions = self.post_process_function(predict_examples, predict_dataset, output.predictions, "predict")
        metrics = dict(output.metrics)
        if self.compute_metrics is not None:
            metrics.update(self._prefixed(self.compute_metrics(predictions), metric_key_prefix))
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics)
        return PredictionOutput(predictions=predictions.predictions, label_ids=predictions.label_ids,
                                metrics=metrics)
