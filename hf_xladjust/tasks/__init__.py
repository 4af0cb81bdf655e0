"""Task data: reading, preprocessing and post-processing for XNLI, WikiANN NER and QA."""
