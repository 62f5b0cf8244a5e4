"""parabench: which transformer to fine-tune for paraphrase identification, at what accuracy, size, speed."""

__version__ = "0.1.0"
