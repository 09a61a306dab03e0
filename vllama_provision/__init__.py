"""vllama-provision: verified, OpenAI-compatible LLM inference hosts from an Ansible inventory."""

__version__ = "0.1.0"
