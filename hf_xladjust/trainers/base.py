"""What every Trainer of this package shares: extra loss terms logged next to `loss`, and resuming."""
from collections import defaultdict

import torch
from transformers import Trainer

from hf_xladjust.compat import rng_state_load_context
from hf_xladjust.model_card import HubPushAtEnd


class MetricsLoggingTrainer(HubPushAtEnd, Trainer):
    """A `Trainer` that collects extra scalars during the step (`record_metric`) and merges their mean
    over the logging window and the processes into the next `log()` of the same mode (as TRL's
    trainers do), so they reach the console, `trainer_state.json` and W&B next to `loss`. With `--push_to_hub`,
    the push happens once everything is saved (`HubPushAtEnd`, `hf_xladjust.model_card.save_model_card`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._metrics = defaultdict(list)

    def record_metric(self, key: str, value: torch.Tensor, mode: str = "train") -> None:
        """Keep a detached scalar for the next log of `mode` ("train" or "eval"); no host sync here."""
        self._metrics[(mode, key)].append(value.detach().float())

    def log(self, logs, *args, **kwargs):
        is_eval = any(k.startswith(("eval_", "test_")) for k in logs)
        mode, prefix = ("eval", "eval_") if is_eval else ("train", "")
        for (m, key), values in self._metrics.items():
            if m == mode and values:
                value = torch.stack(values).mean()
                logs[prefix + key] = self.accelerator.reduce(value, reduction="mean").item()
                values.clear()
        super().log(logs, *args, **kwargs)

    def training_step(self, model, inputs, *args, **kwargs):
        """The Trainer's step; under bf16 on the CPU with the attention kernel that is faster for its length
        (`hf_xladjust.precision.cpu_bf16_attention`)."""
        if self.args.bf16 and self.args.device.type == "cpu":
            from hf_xladjust.precision import cpu_bf16_attention

            with cpu_bf16_attention(inputs):
                return super().training_step(model, inputs, *args, **kwargs)
        return super().training_step(model, inputs, *args, **kwargs)

    def _load_rng_state(self, checkpoint):
        with rng_state_load_context():  # transformers < 4.47 with torch 2.6+
            return super()._load_rng_state(checkpoint)
