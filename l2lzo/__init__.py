"""l2lzo: learned zeroth-order optimizers for LLM fine-tuning."""

__version__ = "0.1.0"
