"""prune-cli: prune the attention heads of pretrained Transformers from one Hydra command."""

import hashlib
import os
from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"
__all__ = ["PruneCallback", "__version__", "load_pruned", "prune", "save_pruned"]


def __getattr__(name):
    """The Python API, imported on first use (`import prune_cli` stays light for the command line):
    `prune` and `PruneCallback` (prune_cli.api), `load_pruned` and `save_pruned` (prune_cli.surgery)."""
    if name in ("prune", "PruneCallback"):
        from prune_cli import api

        return getattr(api, name)
    if name in ("load_pruned", "save_pruned"):
        from prune_cli import surgery

        return getattr(surgery, name)
    raise AttributeError(f"module 'prune_cli' has no attribute {name!r}")


def _data_path(root, relative):
    """`${data_path:${data_root},glue/SST-2}` in task configs: a task's local folder under the
    user's `data_root`, or null (the Hub) when no root is given."""
    return None if root in (None, "") else f"{str(root).rstrip('/')}/{relative}"


def _package_data(name):
    """`${package_data:sst2_sample}`: a data folder shipped inside the installed package (the
    demo's SST-2 sample), found wherever prune-cli is installed."""
    from importlib import resources

    return str(resources.files("prune_cli") / "data" / str(name))


def user_config_dir() -> Path | None:
    """This user's own config folder, searched after the packaged configs (a prune-cli installed
    from a wheel has its conf/ inside site-packages): `$PRUNE_CLI_CONFIG_DIR`, else
    `~/.config/prune-cli`; None when that folder does not exist. `local/default.yaml` there holds
    the machine's settings (data_root: ...); experiment/, model/, ... add options."""
    given = os.environ.get("PRUNE_CLI_CONFIG_DIR")
    try:
        folder = Path(given).expanduser() if given else Path.home() / ".config" / "prune-cli"
    except RuntimeError:  # no home directory to expand
        return None
    return folder.resolve() if folder.is_dir() else None


def _user_searchpath():
    """`${user_searchpath:}`, config.yaml's hydra.searchpath entry: user_config_dir(), or, when
    there is none, the packaged configs again (Hydra warns on every run about a missing folder)."""
    folder = user_config_dir()
    return f"file://{folder}" if folder is not None else "pkg://prune_cli.conf"


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


def _config_groups() -> str:
    """`${config_groups:}`, the group list of `prune-run --help` (hydra.help.template): the options
    a user can choose, packaged or in the user folder; Hydra's own list also shows the bases a
    group's files extend (task/_glue.yaml), which are no options."""
    from prune_cli.groups import help_groups

    return help_groups()


for _name, _fn in (("data_path", _data_path), ("job_dirname", _job_dirname), ("package_data", _package_data),
                   ("user_searchpath", _user_searchpath), ("config_groups", _config_groups)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)
