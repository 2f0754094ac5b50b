"""Building a model from its config alone: what the adapters, the unit space and validation use to
read a model's geometry before (or without) loading its weights."""

from __future__ import annotations

from torch import nn


def build_model(config, auto_class=None, **kwargs) -> nn.Module:
    """A freshly initialised model for `config`: the task's auto class when given, else the class
    named in `config.architectures`, else the bare AutoModel. Dense shapes (see `apply_record`)."""
    import transformers

    if auto_class is not None:  # an AutoModelFor... class or a concrete model class
        build = getattr(auto_class, "from_config", None) or auto_class._from_config
        return build(config, **kwargs)
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is not None:
        return cls._from_config(config, **kwargs)
    return transformers.AutoModel.from_config(config, **kwargs)
