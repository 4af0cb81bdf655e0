"""Metrics and evaluators: task scores, word-distance analysis, sentence retrieval."""
