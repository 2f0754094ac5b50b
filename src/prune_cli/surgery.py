"""Surgery: make a model physically smaller by removing attention heads, and save/reload it.

`remove_heads` slices the query/key/value rows and the output-projection columns of every head
that is not kept, so the pruned model does less work (the point of pruning), and layers may keep
different numbers of heads, zero included. Invariant, tested on every supported architecture: the
pruned model computes what the dense model computes with those heads gated to 0. A fused q/k/v
projection (GPT-2, GPT-NeoX, Phi-3) is sliced once, keeping each part's features where the family's
layout places them (`arch.projections`, which also handles GPT-2's transposed Conv1D weights).

A checkpoint of such a model cannot be reloaded by `from_pretrained` (its shapes differ from
what the config says), so the kept ORIGINAL head ids of every pruned block are stored in the
config (`heads.RECORD_KEY`); `load_pruned` builds the dense model from the config, re-applies
the record to get the shapes, then loads the weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from prune_cli import standalone
from prune_cli.arch.build import build_model
from prune_cli.arch.empty import stand_in
from prune_cli.arch.projections import chunk_rows, fused_index, out_features, sliced
from prune_cli.arch.runtime import BlockConfig, SharedBiasHeads, UnevenConfig, install_guard
from prune_cli.arch.t5 import takes_shared_bias
from prune_cli.heads import RECORD_KEY, HeadSpace, base_prefix, head_keys, match_layout
from prune_cli.units import STORED, UNITS_KEY, UnitSpace


def count_params(model: nn.Module) -> int:
    """Parameters, counting tied tensors once (`parameters()` already de-duplicates them)."""
    return sum(p.numel() for p in model.parameters())


def remove_heads(model: nn.Module, keep: torch.Tensor, space: HeadSpace | None = None) -> HeadSpace:
    """Remove every head whose entry in `keep` (bool over the heads the model has NOW, in the
    order of `HeadSpace.from_model(model)`) is False; returns the new HeadSpace of the model.

    Parameters are replaced, so build optimizers afterwards. `remove_units` is the general form.
    """
    units = UnitSpace.from_model(model)
    space = space or units.current_heads()
    keep = torch.as_tensor(keep, dtype=torch.bool).flatten().cpu()
    if keep.numel() != space.total:
        raise ValueError(f"keep mask has {keep.numel()} entries, the model has {space.total} heads")
    dense_keep = torch.zeros(units.total, dtype=torch.bool)
    flat = torch.tensor([i for block in units.positions(space) for i in block], dtype=torch.long)
    dense_keep[flat[keep]] = True
    remove_units(model, units.with_masks({"head": dense_keep}), units)
    return HeadSpace.from_model(model)


def remove_units(model: nn.Module, target: UnitSpace, current: UnitSpace | None = None) -> UnitSpace:
    """Make `model` hold exactly the units `target` keeps (heads, query/key and value/output
    dimensions, FFN neurons, in any mix); `current` is the space the model holds now (default:
    read from its config). Returns `target`, which now describes the model.

    Masks only shrink: a unit the model no longer has cannot come back.
    """
    current = current or UnitSpace.from_model(model)
    for kind in STORED:
        grown = target.kept(kind) & ~current.kept(kind)
        if bool(grown.any()):
            raise ValueError(f"{int(grown.sum())} {kind} units are kept by the target but already removed from the model")
    modules = dict(model.named_modules())
    for i, block in enumerate(current.blocks):
        old, new = current.block_layout(i), target.block_layout(i)
        if old == new:
            continue
        q_pos, v_pos, head_pos = {}, {}, {}
        for n, (h, qd, vd) in enumerate(old):
            head_pos[h] = n
            for j in qd:
                q_pos[(h, j)] = len(q_pos)
            for j in vd:
                v_pos[(h, j)] = len(v_pos)
        q_index = [q_pos[(h, j)] for h, qd, _ in new for j in qd]
        v_index = [v_pos[(h, j)] for h, _, vd in new for j in vd]
        kv_index = None
        counts = (len(old), len(old)), (len(new), len(new))  # (query heads, key/value heads) before, after
        if block.group_size > 1:  # key/value rows go by group: a group stays while a query head of it is left
            old_groups = {g: n for n, g in enumerate(sorted({h // block.group_size for h, _, _ in old}))}
            new_groups = sorted({h // block.group_size for h, _, _ in new})
            kv_index = [old_groups[g] * block.head_dim + j for g in new_groups for j in range(block.head_dim)]
            counts = (len(old), len(old_groups)), (len(new), len(new_groups))
        _reshape_block(model, modules, block, q_index, v_index, new, [head_pos[h] for h, _, _ in new],
                       target.is_even(i), kv_index, counts)
    for j, ffn in enumerate(current.ffns):
        old, new = current.ffn_kept(j), target.ffn_kept(j)
        if old != new:
            pos = {n: p for p, n in enumerate(old)}
            _reshape_ffn(model, modules, ffn, [pos[n] for n in new])
    heads, units = target.record(base_prefix(model))
    setattr(model.config, RECORD_KEY, heads)
    setattr(model.config, UNITS_KEY, units)
    return target


def apply_record(model: nn.Module) -> nn.Module:
    """Give a dense-built model the shapes of the pruned model its config describes (weights are
    then loaded over them). A no-op for a model that was never pruned."""
    from prune_cli.embeddings import apply_embed_record

    apply_embed_record(model)
    if not (getattr(model.config, RECORD_KEY, None) or getattr(model.config, UNITS_KEY, None)):
        return model
    target = UnitSpace.from_model(model)
    remove_units(model, target, UnitSpace.from_model(model, dense=True))
    return model


def save_pruned(model: nn.Module, path, tokenizer=None) -> Path:
    """A HF folder that loads with plain transformers (`standalone`: `modeling_pruned.py` and
    `auto_map` where the shapes differ from the stock model's; `trust_remote_code=True`) and with
    `load_pruned` (the config carries the kept units), plus `heads.json` for humans. A full disk is
    `checkpoints.DiskFull` (one line), whatever library was writing."""
    from prune_cli.checkpoints import writing

    path = Path(path)
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
        # the model's own parameter names, which `load_pruned` reads back as they are (by default
        # transformers 5 renames some to a legacy checkpoint's, e.g. GPT-NeoX's lm_head to embed_out)
        model.save_pretrained(path, save_original_format=False)
        standalone.write(model, path)
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
    standalone.forget(config)  # this folder's remote-code keys: save_pruned writes them afresh
    model = apply_record(build_model(config, auto_class, **kwargs))
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    state = {}
    for f in files:
        state.update(load_file(f))
    fresh = set()
    if fresh_head:
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
def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def _reshape_block(model, modules, block, q_index: list[int], v_index: list[int], layout, head_index: list[int],
                   even: bool, kv_index: list[int] | None = None, counts=None) -> None:
    """Keep query/key features `q_index` and value/output features `v_index` (positions in the
    block's current weights) of attention block `block` (a dense Block); `layout` is what it then
    holds [(head, qk dims, vo dims)], `head_index` the kept heads' positions among its current heads.
    Under grouped-query attention `kv_index` are the rows of W_k and W_v kept (whole groups); groups
    left with unequal numbers of query heads read their key/value head through `uneven_attention`.
    `counts`: (query heads, key/value heads) the block holds before and after, which place the parts
    of a fused q/k/v projection (`projections.fused_index`)."""

    name, o_name = block.name, block.o
    module = modules[name]
    layout_attrs = match_layout(module)
    if hasattr(module, "block_len"):  # LongT5's local attention (validate refuses it up front)
        raise NotImplementedError(f"{name}: head surgery on LongT5 local attention is not supported")
    shared_bias = takes_shared_bias(module)
    k_index, vv_index = (q_index, v_index) if kv_index is None else (kv_index, kv_index)
    if layout_attrs.fused:  # one projection: its q, k and v features, placed as the layout says
        index = fused_index(layout_attrs.fused, block.head_dim, *counts, q_index, k_index, vv_index)
        setattr(module, layout_attrs.q, sliced(getattr(module, layout_attrs.q), index, 0))
    else:
        for attr, index in ((layout_attrs.q, q_index), (layout_attrs.k, k_index), (layout_attrs.v, vv_index)):
            setattr(module, attr, sliced(getattr(module, attr), index, 0))
    _set_module(model, o_name, sliced(modules[o_name], v_index, 1))
    modules[o_name] = model.get_submodule(o_name)
    heads = [h for h, _, _ in layout]
    # the block's own values of what its forward reads from the shared model config (Phi-3)
    overrides = {a: len(heads) for a in layout_attrs.config_count_attrs} if heads else {}
    if isinstance(module.__dict__.get("config"), BlockConfig):
        module.config = module.config._model_config
    module.__dict__.pop("_prune_cli_groups", None)
    module.__dict__.pop("_prune_cli_head_dim", None)
    module.__dict__.pop("_prune_cli_kv_index", None)
    head_dim = block.head_dim if even or not heads else 1
    if layout_attrs.groups_attr:
        groups = [h // block.group_size for h in heads]
        sizes = {groups.count(g) for g in groups}
        if len(sizes) <= 1:  # every group keeps as many query heads: the stock repeat of keys/values
            setattr(module, layout_attrs.groups_attr, sizes.pop() if sizes else 1)
        else:  # each query head reads its own group's key/value head by index
            setattr(module, layout_attrs.groups_attr, 1)
            order = sorted(set(groups))
            module._prune_cli_kv_index = torch.tensor([order.index(g) for g in groups], dtype=torch.long)
            module.config = UnevenConfig(module.config, overrides)
            install_guard(module)
    setattr(module, layout_attrs.head_dim_attr, head_dim)
    for attr in layout_attrs.count_attrs:
        setattr(module, attr, len(heads))
    for attr in layout_attrs.kv_count_attrs:  # the key/value heads left (Phi-3 slices its keys by them)
        if hasattr(module, attr):
            setattr(module, attr, counts[1][1] if counts else len(heads))
    for attr in layout_attrs.width_attrs:
        if hasattr(module, attr):
            setattr(module, attr, len(v_index))
    if heads and not even:
        groups: list[list[int]] = []
        for _, qd, vd in layout:
            if groups and groups[-1][1:] == [len(qd), len(vd)]:
                groups[-1][0] += 1
            else:
                groups.append([1, len(qd), len(vd)])
        module._prune_cli_groups = tuple(tuple(g) for g in groups)
        module._prune_cli_head_dim = block.head_dim
        module.config = UnevenConfig(module.config, overrides)
        install_guard(module)
    if overrides and not isinstance(module.__dict__.get("config"), BlockConfig):
        module.config = BlockConfig(module.config, overrides)
    if getattr(module, "has_relative_attention_bias", False) and not shared_bias:
        # UMT5: every block owns its bias table, one column per head: keep the kept heads' columns
        table = module.relative_attention_bias
        table.weight = nn.Parameter(table.weight.data[:, head_index].clone(), requires_grad=table.weight.requires_grad)
        table.embedding_dim = len(head_index)
    inside = o_name.startswith(name + ".")
    if not heads:
        own_table = getattr(module, "has_relative_attention_bias", False) and not shared_bias
        empty = stand_in(module, layout_attrs, o_name[len(name) + 1:] if inside else None, own_table)
        # a T5 block that kept nothing still hands the stack's bias on (the first one computes it)
        module.forward = SharedBiasHeads(module, [0], empty) if shared_bias else empty
    elif shared_bias:
        module.forward = SharedBiasHeads(module, heads)


def _reshape_ffn(model, modules, ffn, index: list[int]) -> None:
    """Keep neurons `index` (positions in the FFN's current weights): rows of its input
    projections (of every chunk of a fused one), columns of its output projection. Width 0 leaves
    the output bias alone."""
    for path in ffn.inputs:
        rows = chunk_rows(ffn.chunks, out_features(modules[path]) // ffn.chunks, index)
        _set_module(model, path, sliced(modules[path], rows, 0))
        modules[path] = model.get_submodule(path)
    _set_module(model, ffn.output, sliced(modules[ffn.output], index, 1))
    modules[ffn.output] = model.get_submodule(ffn.output)
