"""hf-xladjust: cross-lingual adjustment of multilingual encoders as HuggingFace Trainer extensions."""
__version__ = "0.1.0"
