"""gad: black-box on-policy distillation of LLMs with Generative Adversarial Distillation."""

__version__ = "0.1.0"
