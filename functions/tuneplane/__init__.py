"""tuneplane control plane: an OpenAI-compatible fine-tuning API (files, jobs, models, chat)."""

__version__ = "0.1.0"
