"""Trainer subclasses: stage-1 adjustment and continual alignment during fine-tuning."""
