"""The packaged config groups as Hydra composes them.

A group file may extend another through its defaults list (`task/cola.yaml` starts with
`defaults: [_glue, _self_]`, `trainer/mt.yaml` with `[default, _self_]`): reading the file alone
(`OmegaConf.load`) misses the keys of its base. `compose_option` asks Hydra instead. Files whose
name starts with `_` are such bases, never options of their own.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

CONF_MODULE = "prune_cli.conf"


def is_option(file_name: str) -> bool:
    """A group's YAML file that can be chosen (`task=cola`); `_glue.yaml` is a base, not an option."""
    return file_name.endswith(".yaml") and not file_name.startswith("_")


def options(group: str) -> list[str]:
    """The packaged options of `group` (e.g. "task"), sorted."""
    from importlib import resources

    folder = resources.files(CONF_MODULE).joinpath(*group.split("/"))
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if is_option(p.name))


def group_options(group: str, extra=()) -> list[str] | None:
    """The options of `group` in the packaged configs, the folders `extra` (--config-dir) and the
    user folder together; None when no such group exists anywhere."""
    from importlib import resources

    from prune_cli import user_config_dir

    user = user_config_dir()
    found = None
    for folder in [resources.files(CONF_MODULE), *extra, *([user] if user else [])]:
        folder = folder.joinpath(*group.split("/"))
        if folder.is_dir():
            found = (found or set()) | {p.name[: -len(".yaml")] for p in folder.iterdir() if is_option(p.name)}
    return None if found is None else sorted(found)


def help_groups() -> str:
    """`group: option, option...` for every config group a run composes (hydra/launcher included):
    `prune-run --help`'s list (hydra.help.template); Hydra's own shows the bases too."""
    from importlib import resources

    root = resources.files(CONF_MODULE)
    groups = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in ("hydra", "local", "__pycache__"))
    builtin = {"hydra/launcher": ["basic"]}  # Hydra's own default launcher
    return "\n".join(f"{g}: {', '.join(builtin.get(g, []) + options)}" for g in [*groups, "hydra/launcher"]
                     if (options := group_options(g)))


def compose_option(group: str, name: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The node `group=name` puts in a run's config (e.g. the `task` node of `task=cola`, its
    _glue.yaml base merged in), as a config of its own: interpolations such as
    ${data_path:${data_root},...} left unresolved, no struct flag, as OmegaConf.load gave it.
    `overrides` as on the command line (`task.max_length=64`). Inside a prune-run job it uses that
    run's search path (--config-dir, the user folder), elsewhere the packaged configs."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    args = [f"{group}={name}", *overrides]
    if GlobalHydra.instance().is_initialized():
        cfg = compose("config", overrides=args)
    else:
        try:
            with initialize_config_module(CONF_MODULE, version_base="1.3"):
                cfg = compose("config", overrides=args)
        finally:
            GlobalHydra.instance().clear()
    node = OmegaConf.select(cfg, group.replace("/", "."))
    return OmegaConf.create(OmegaConf.to_container(node, resolve=False))
