"""llmserve: an OpenAI-compatible, continuously batched inference service."""

__version__ = "0.1.0"
