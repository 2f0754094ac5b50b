"""prune-cli: prune the attention heads of pretrained Transformers from one Hydra command."""

__version__ = "0.1.0"
