"""swarmgate: an OpenAI-compatible gateway for composed LLM ensembles."""

__version__ = "0.1.0"
