"""prune-cli: prune the attention heads of pretrained Transformers from one Hydra command."""

import hashlib

from omegaconf import OmegaConf

__version__ = "0.1.0"


def _data_path(root, relative):
    """`${data_path:${data_root},glue/SST-2}` in task configs: a task's local folder under the
    user's `data_root`, or null (the Hub) when no root is given."""
    return None if root in (None, "") else f"{str(root).rstrip('/')}/{relative}"


def _package_data(name):
    """`${package_data:sst2_sample}`: a data folder shipped inside the installed package (the
    demo's SST-2 sample), found wherever prune-cli is installed."""
    from importlib import resources

    return str(resources.files("prune_cli") / "data" / str(name))


def _job_dirname(num, overrides, limit: int = 160):
    """A multirun job's folder: `<num>_<its overrides>`, as Hydra names it, but cut to `limit`
    characters plus a hash of the whole when longer. A sweep with many fixed overrides otherwise
    asks for a name past the file system's 255 bytes and every job dies before it starts;
    metrics.json and .hydra/overrides.yaml still hold every override in full."""
    name = f"{num}_{overrides}" if overrides else str(num)
    if len(name) <= limit:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return f"{name[:limit - 9]}~{digest}"


for _name, _fn in (("data_path", _data_path), ("job_dirname", _job_dirname), ("package_data", _package_data)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
