"""chatgate: a self-hosted, OpenAI-compatible chat gateway."""

__version__ = "0.1.0"

__all__ = ["__version__"]
