"""Surgery: make a model physically smaller by removing attention heads, and save/reload it.

`remove_heads` slices the query/key/value rows and the output-projection columns of every head
that is not kept, so the pruned model does less work (the point of pruning), and layers may keep
different numbers of heads, zero included. Invariant, tested on every supported architecture: the
pruned model computes what the dense model computes with those heads gated to 0.

A checkpoint of such a model cannot be reloaded by `from_pretrained` (its shapes differ from
what the config says), so the kept ORIGINAL head ids of every pruned block are stored in the
config (`heads.RECORD_KEY`); `load_pruned` builds the dense model from the config, re-applies
the record to get the shapes, then loads the weights.
"""

from __future__ import annotations

import inspect
import json
import re
import warnings
from pathlib import Path

import torch
from torch import nn
from transformers.pytorch_utils import prune_linear_layer

from prune_cli.heads import RECORD_KEY, HeadSpace, base_prefix, match_layout, read_record


def count_params(model: nn.Module) -> int:
    """Parameters, counting tied tensors once (`parameters()` already de-duplicates them)."""
    return sum(p.numel() for p in model.parameters())


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


def remove_heads(model: nn.Module, keep: torch.Tensor, space: HeadSpace | None = None) -> HeadSpace:
    """Remove every head whose entry in `keep` (bool [space.total]) is False; returns the new space.

    `space` must describe `model` as it is now (a model pruned before has fewer heads: build the
    space with `HeadSpace.from_model`). Parameters are replaced, so build optimizers afterwards.
    """
    space = space or HeadSpace.from_model(model)
    keep = torch.as_tensor(keep, dtype=torch.bool).flatten().cpu()
    if keep.numel() != space.total:
        raise ValueError(f"keep mask has {keep.numel()} entries, the model has {space.total} heads")
    record = {name[len(base_prefix(model)):]: ids for name, ids in read_record(model).items()}
    modules = dict(model.named_modules())
    for block, kept in zip(space.blocks, space.split(keep)):
        if bool(kept.all()):
            continue
        local = kept.nonzero().flatten().tolist()
        original = [block.heads[i] for i in local]
        _slice_block(model, modules, block.name, local, block.head_dim, block.o, original)
        record[_relative(model, block.name)] = original
    setattr(model.config, RECORD_KEY, record)
    return HeadSpace.from_model(model)


def apply_record(model: nn.Module) -> nn.Module:
    """Give a dense-built model the shapes of the pruned model its config describes (weights are
    then loaded over them). A no-op for a model that was never pruned."""
    modules = dict(model.named_modules())
    for name, ids in read_record(model).items():
        module = modules.get(name)
        layout = match_layout(module) if module is not None else None
        if layout is None:
            raise ValueError(f"config.{RECORD_KEY} names {name!r}, which is not an attention block of {type(model).__name__}")
        head_dim = getattr(module, layout.head_dim_attr)
        if getattr(module, layout.q).out_features != len(ids) * head_dim:
            from prune_cli.heads import resolve

            _slice_block(model, modules, name, list(range(len(ids))), head_dim, resolve(name, layout.o), list(ids))
    return model


def save_pruned(model: nn.Module, path, tokenizer=None) -> Path:
    """A standard HF folder (config carries the kept heads) plus `heads.json` for humans."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    space = HeadSpace.from_model(model)
    (path / "heads.json").write_text(
        json.dumps({"heads_kept": space.total, "params": count_params(model), "blocks": space.describe()}, indent=1)
    )
    return path


def load_pruned(path, auto_class=None, config_overrides: dict | None = None, fresh_head: bool = False,
                **kwargs) -> nn.Module:
    """Rebuild a model saved by `save_pruned` (or any unpruned HF folder) with its pruned shapes.

    `config_overrides` (a task's num_labels, id2label...) win over the saved config;
    `fresh_head=True` keeps the new model's initialised task head instead of the saved one (the
    checkpoint was trained for other labels: `prune_cli.models.label_change`)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    path = Path(path)
    config = AutoConfig.from_pretrained(path, **(config_overrides or {}))
    model = apply_record(build_model(config, auto_class, **kwargs))
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    state = {}
    for f in files:
        state.update(load_file(f))
    fresh = set()
    if fresh_head:
        from prune_cli.models import head_keys

        fresh = set(head_keys(model))
        state = {k: v for k, v in state.items() if k not in fresh}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path}: weights not in the model: {result.unexpected_keys[:5]}")
    model.tie_weights()
    loaded = {p.data_ptr() for k, p in model.state_dict().items() if k in state}
    # keys the model does not save (e.g. Marian's sinusoidal positions) keep their built values
    ignore = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or [])]
    untied = [k for k in result.missing_keys if k not in fresh
              and model.state_dict()[k].data_ptr() not in loaded and not any(p.search(k) for p in ignore)]
    if untied:
        raise ValueError(f"{path}: weights missing from the checkpoint: {untied[:5]}")
    return model.eval()


# ---------------------------------------------------------------------------- internals
def _relative(model: nn.Module, name: str) -> str:
    prefix = base_prefix(model)
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _slice_block(model, modules, name: str, local: list[int], head_dim: int, o_name: str,
                 original: list[int]) -> None:
    """Keep heads `local` (positions in the block's current weights) of attention module `name`;
    `original` are their ids in the dense model (T5's shared position bias is indexed by them)."""
    module = modules[name]
    layout = match_layout(module)
    if hasattr(module, "block_len"):  # LongT5's local attention (validate refuses it up front)
        raise NotImplementedError(f"{name}: head surgery on LongT5 local attention is not supported")
    shared_bias = takes_shared_bias(module)
    index = (torch.tensor(local, dtype=torch.long)[:, None] * head_dim + torch.arange(head_dim)).flatten()
    with warnings.catch_warnings():  # "Initializing zero-element tensors is a no-op" for empty blocks
        warnings.simplefilter("ignore", UserWarning)
        # prune_linear_layer builds the new layer in the default dtype: keep the model's (bf16...)
        for attr in (layout.q, layout.k, layout.v):
            lin = getattr(module, attr)
            setattr(module, attr, prune_linear_layer(lin, index.to(lin.weight.device), dim=0).to(lin.weight.dtype))
        o_proj = modules[o_name]
        new_o = prune_linear_layer(o_proj, index.to(o_proj.weight.device), dim=1).to(o_proj.weight.dtype)
        _set_module(model, o_name, new_o)
    modules[o_name] = model.get_submodule(o_name)
    for attr in layout.count_attrs:
        setattr(module, attr, len(local))
    for attr in layout.width_attrs:
        if hasattr(module, attr):
            setattr(module, attr, len(local) * head_dim)
    if getattr(module, "has_relative_attention_bias", False) and not shared_bias:
        # UMT5: every block owns its bias table, one column per head: keep the kept heads' columns
        table = module.relative_attention_bias
        table.weight = nn.Parameter(table.weight.data[:, local].clone(), requires_grad=table.weight.requires_grad)
        table.embedding_dim = len(local)
    inside = o_name.startswith(name + ".")
    if not local:
        own_table = getattr(module, "has_relative_attention_bias", False) and not shared_bias
        empty = _EmptyAttention(module, layout, o_name[len(name) + 1:] if inside else None, own_table)
        # a T5 block that kept nothing still hands the stack's bias on (the first one computes it)
        module.forward = _SharedBiasHeads(module, [0], empty) if shared_bias else empty
    elif shared_bias:
        module.forward = _SharedBiasHeads(module, original)


def takes_shared_bias(module: nn.Module) -> bool:
    """T5 and mT5 compute the relative-position bias once per stack (first layer, every head) and
    pass it down to the later layers through `position_bias`; UMT5 gives each block its own."""
    return hasattr(module, "has_relative_attention_bias") and "position_bias" in inspect.signature(
        type(module).forward).parameters


def _stock_forward(module: nn.Module):
    """The class's own forward, bound to `module` (the instance attribute is our stand-in)."""
    return type(module).forward.__get__(module)


class _SharedBiasHeads:
    """Forward of a T5 block that lost heads: it takes its own heads' rows of the stack's shared
    position bias and hands the FULL bias on, so later blocks (pruned differently, or not at all)
    still find every head's row. The first block keeps the whole bias table for the same reason.

    The bias is found by parameter name (`position_bias`, bound through the stock signature, so
    positional and keyword calls both work) and returned as the second output; both are pinned by
    `tests/test_stack_contract.py`, and `_check_bias` raises if a release moves it.
    """

    def __init__(self, module: nn.Module, heads: list[int], run=None):
        self.module_ref = [module]  # a list keeps this a plain object, not a registered submodule
        self.heads = torch.tensor(heads, dtype=torch.long)
        self.run = run  # what computes the block (default: the stock forward)
        self.signature = inspect.signature(type(module).forward)

    def _mine(self, bias: torch.Tensor) -> torch.Tensor:
        return bias.index_select(1, self.heads.to(bias.device))

    def __call__(self, *args, **kwargs):
        module = self.module_ref[0]
        run = self.run or _stock_forward(module)
        bound = self.signature.bind(module, *args, **kwargs)
        incoming = bound.arguments.get("position_bias")
        if incoming is not None:
            bound.arguments["position_bias"] = self._mine(incoming)
            out = run(*bound.args[1:], **bound.kwargs)
            _check_bias(module, out, self._mine(incoming))
            return (out[0], incoming, *out[2:])
        if not module.has_relative_attention_bias:
            # a zero bias sized to this block: return None so the next block builds its own zeros
            out = run(*args, **kwargs)
            return (out[0], None, *out[2:])
        full = []

        def compute_bias(*a, **k):  # the stock forward asks for the bias at the right positions
            full.append(type(module).compute_bias(module, *a, **k))
            return self._mine(full[-1])

        module.compute_bias = compute_bias
        try:
            out = run(*args, **kwargs)
        finally:
            del module.compute_bias
        if not full:
            raise RuntimeError(
                f"{type(module).__name__}.forward no longer calls compute_bias (transformers "
                f"{_transformers_version()}): prune-cli's T5 surgery needs updating"
            )
        _check_bias(module, out, self._mine(full[0]))
        return (out[0], full[0], *out[2:])


def _check_bias(module: nn.Module, out, mine: torch.Tensor) -> None:
    """Fail loudly (never compute wrongly) if the stock T5 forward stops returning the bias second."""
    if not (isinstance(out, tuple) and len(out) >= 2 and isinstance(out[1], torch.Tensor)
            and out[1].shape == mine.shape):
        raise RuntimeError(
            f"{type(module).__name__}.forward no longer returns (output, position_bias, ...) "
            f"(transformers {_transformers_version()}): prune-cli's T5 surgery needs updating"
        )


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


#: width of the stand-in head an empty block runs with: small, and a size every attention kernel takes
STAND_IN_DIM = 8


class _EmptyAttention:
    """Forward of an attention block that kept no heads.

    The stock forward cannot run with zero heads (`view(..., -1, head_dim)` of an empty tensor is
    ambiguous), and a hand-written stand-in has to re-implement whatever the release does with its
    arguments: the KV cache (a decoder self-attention must still advance its cache layer, or the
    past length later steps read — T5's position bias among them — is wrong), cache positions, the
    returned tuple. So the STOCK forward runs, with one stand-in head: zero query/key/value
    projections of width `STAND_IN_DIM` and a zero output weight with the block's real output
    bias. These are not parameters (nothing is saved, counted or trained, except the real bias).
    The head's values are 0, so the block outputs exactly its output bias — what the gated model
    computes with every gate of the block at 0 — whatever the cache, the mask or the attention
    kernel. The stand-in costs a few tiny ops per call (see docs/benchmarks.md).
    """

    def __init__(self, module: nn.Module, layout, o_attr: str | None, own_table: bool):
        self.module_ref = [module]  # a list keeps this a plain object, not a registered submodule
        self.o_attr = o_attr  # the output projection inside the block (BART, DistilBERT, T5), else None
        # what the call swaps in, built once: zero projections computing in the dtype/device of
        # the block's (empty) query projection, the real output bias, one head of STAND_IN_DIM
        ref = getattr(module, layout.q)
        width = STAND_IN_DIM
        self.swaps = {a: _Zeros(width, ref) for a in (layout.q, layout.k, layout.v)}
        if o_attr is not None:
            o_proj = getattr(module, o_attr)
            self.swaps[o_attr] = _Zeros(o_proj.out_features, ref, bias_of=o_proj)
        if own_table:  # UMT5: the block's own (now empty) relative-position table
            self.swaps["relative_attention_bias"] = _Zeros(1, ref)
        self.swaps[layout.head_dim_attr] = width
        self.swaps.update({a: 1 for a in layout.count_attrs})
        self.swaps.update({a: width for a in layout.width_attrs if hasattr(module, a)})

    def __call__(self, *args, **kwargs):
        module = self.module_ref[0]
        saved = {a: getattr(module, a) for a in self.swaps}
        for a, value in self.swaps.items():
            setattr(module, a, value)
        try:
            out = type(module).forward(module, *args, **kwargs)
        finally:
            for a, value in saved.items():
                setattr(module, a, value)
        if self.o_attr is None:  # the output projection lives outside the block (BERT): no features
            out = (out[0][..., :0], *out[1:]) if isinstance(out, tuple) else out[..., :0]
        return out


class _Zeros(nn.Module):
    """A stand-in projection (or bias table) that outputs zeros of `width` features, in the dtype
    and on the device of `like` (a module of the block), plus the bias of `bias_of` (a real
    parameter, which keeps its gradient). Modules are referenced, not registered, and read at
    call time, so `model.to(...)` and loaded weights are followed."""

    def __init__(self, width: int, like: nn.Module, bias_of: nn.Module | None = None):
        super().__init__()
        self.width, self.refs = width, [like, bias_of]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        like, bias_of = self.refs
        lead = x.shape[:-1] if x.is_floating_point() else x.shape  # features, or bucket ids (table)
        out = torch.zeros(*lead, self.width, dtype=like.weight.dtype, device=like.weight.device)
        bias = None if bias_of is None else bias_of.bias
        return out if bias is None else out + bias
