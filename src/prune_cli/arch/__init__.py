"""Architecture adapters: the families prune-cli can prune, looked up by `config.model_type`.

Adding a family is one module declaring a `Family` (its attention and FFN layouts, block kinds,
what surgery may do) plus its line in FAMILIES below; tests/test_arch.py then runs the gate ==
surgery and cached-generation checks on a tiny random model of it.
"""

from __future__ import annotations

from prune_cli.arch.base import KINDS, AttentionLayout, Family, FFNLayout, Geometry, layer_index, resolve
from prune_cli.arch.build import build_model
from prune_cli.arch.encoder import BERT, DISTILBERT
from prune_cli.arch.gpt2 import GPT2
from prune_cli.arch.gpt_neox import GPT_NEOX
from prune_cli.arch.llama import LLAMA
from prune_cli.arch.opt import OPT
from prune_cli.arch.phi3 import PHI3
from prune_cli.arch.seq2seq import BART, PEGASUS
from prune_cli.arch.t5 import LONGT5, T5, UMT5
from prune_cli.errors import ConfigError

FAMILIES: tuple[Family, ...] = (BERT, DISTILBERT, BART, PEGASUS, T5, UMT5, LONGT5, OPT, LLAMA, GPT2, PHI3,
                               GPT_NEOX)
_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}

__all__ = [
    "FAMILIES",
    "KINDS",
    "AttentionLayout",
    "FFNLayout",
    "Family",
    "Geometry",
    "build_model",
    "family_of",
    "layer_index",
    "resolve",
    "supported_types",
]


def supported_types() -> list[str]:
    return sorted(_BY_TYPE)


def family_of(model_or_config) -> Family:
    """The family of a model or config; ConfigError naming the model type when none is declared."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = str(getattr(config, "model_type", "") or "")
    family = _BY_TYPE.get(model_type)
    if family is None:
        raise ConfigError("model", model_type or type(config).__name__,
                          f"a model of a family prune-cli declares ({', '.join(supported_types())}): "
                          "a new family is one module in prune_cli/arch/")
    refused = family.unsupported(config) if family.unsupported is not None else None
    if refused:
        attr, value, allowed = refused
        raise ConfigError(f"{model_type}.{attr}", value, allowed)
    return family
