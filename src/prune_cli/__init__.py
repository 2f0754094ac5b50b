"""prune-cli: prune the attention heads of pretrained Transformers from one Hydra command."""

from omegaconf import OmegaConf

__version__ = "0.1.0"


def _data_path(root, relative):
    """`${data_path:${data_root},glue/SST-2}` in task configs: a task's local folder under the
    user's `data_root`, or null (the Hub) when no root is given."""
    return None if root in (None, "") else f"{str(root).rstrip('/')}/{relative}"


if not OmegaConf.has_resolver("data_path"):
    OmegaConf.register_new_resolver("data_path", _data_path)
