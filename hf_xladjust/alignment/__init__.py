"""Stage 1 inputs and objective: parallel corpora, word aligners, aligned-pair data, the alignment loss."""
