"""Attention of heads with unequal query/key and value sizes, through transformers' public seam.

Stock attention modules (BERT, RoBERTa, DistilBERT, BART, Marian, T5...) all do the same thing:
project, `view(..., -1, head_size)`, call the function `ALL_ATTENTION_FUNCTIONS` holds under
`config._attn_implementation`, and `reshape(..., -1)` the result into the output projection. A block
whose heads lost different numbers of dimensions cannot be described by one head size, so surgery
gives it head size 1 (q, k and v then arrive as one "head" per dimension, whatever their counts)
and a view of the model config whose `_attn_implementation` names `UNEVEN` (registered with
`AttentionInterface`). That function regroups the dimensions into the block's real heads (the
pruned weights hold heads of equal (qk, vo) size side by side: `UnitSpace.block_layout`) and runs
the model's OWN attention function (eager, sdpa...) once per group, on zero-copy views, with the
block's original scale 1/sqrt(dense head size). Query/key size 0 gives the uniform attention the
gated model computes: a masked mean of the values (one zero query/key dimension through the
attention function where the mask differs per query: causal, biased or dropout). Everything else -- the mask, the KV
cache, dropout, T5's position bias (sliced per group) -- is the stock code's.

Why groups rather than padding every head of a layer to its largest size: padding keeps zero
rows as parameters (the saved model would be larger than its kept units) and spends FLOPs on
them; the measured comparison is in docs/benchmarks.md.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

UNEVEN = "prune_cli_uneven"


class BlockConfig:
    """The model config as one pruned block sees it: every attribute is the model's (read at call
    time, so `set_attn_implementation` and config edits still reach the block) except `overrides`,
    the block's own values of attributes its forward reads from the shared config (Phi-3's query
    head count: `AttentionLayout.config_count_attrs`)."""

    def __init__(self, config, overrides: dict | None = None):
        object.__setattr__(self, "_model_config", config)
        object.__setattr__(self, "_overrides", dict(overrides or {}))

    def __getattr__(self, name):
        if name.startswith("__") or name in ("_model_config", "_overrides"):
            raise AttributeError(name)
        overrides = self.__dict__["_overrides"]
        return overrides[name] if name in overrides else getattr(self._model_config, name)

    def __setattr__(self, name, value):
        setattr(self._model_config, name, value)

    def __deepcopy__(self, memo):
        import copy

        return type(self)(copy.deepcopy(self._model_config, memo), self._overrides)

    def __reduce__(self):
        return type(self), (self._model_config, self._overrides)


class UnevenConfig(BlockConfig):
    """A block config whose attention implementation routes the block through `uneven_attention`."""

    @property
    def _attn_implementation(self) -> str:
        return UNEVEN

    @property
    def base_implementation(self) -> str:
        return self._model_config._attn_implementation


def install_guard(module) -> None:
    """Make an uneven block fail loudly, never compute wrongly, if a transformers release stops
    routing it through `config._attn_implementation`: the stock kernel would then treat every
    dimension as a head. A pre-hook clears a flag that `uneven_attention` sets, a forward hook
    checks it. Installed once per module (idle for a block that is whole again)."""
    if _clear not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_clear)
        module.register_forward_hook(_check)


def _clear(module, args):
    module.__dict__["_prune_cli_ran"] = False


def _check(module, args, output):
    uneven = module.__dict__.get("_prune_cli_groups") or module.__dict__.get("_prune_cli_kv_index") is not None
    if uneven and not module.__dict__.get("_prune_cli_ran"):
        import transformers

        raise RuntimeError(
            f"{type(module).__name__} no longer calls the attention function named by config._attn_implementation "
            f"(transformers {transformers.__version__}): prune-cli's heads of unequal sizes need updating")


def uneven_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query/key: [b, Dqk, n, 1], value: [b, Dv, n, 1] (head size 1); returns ([b, n, Dv], None).
    A grouped-query block whose groups kept unequal numbers of query heads instead gets whole heads
    and its key/value heads (as the cache holds them), each repeated for its own query heads."""
    module.__dict__["_prune_cli_ran"] = True
    base_name = module.config.base_implementation
    base = _eager if base_name == "eager" else ALL_ATTENTION_FUNCTIONS[base_name]
    kv_index = module.__dict__.get("_prune_cli_kv_index")
    if kv_index is not None:  # grouped-query attention, groups of unequal sizes: one key/value head per query head
        if kv_index.device != key.device:  # moved once, not copied to the device at every call
            kv_index = module.__dict__["_prune_cli_kv_index"] = kv_index.to(key.device)
        key, value = key.index_select(1, kv_index), value.index_select(1, kv_index)
        return base(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    bias = kwargs.pop("position_bias", None)
    groups = module._prune_cli_groups
    if len(groups) > 1 and attention_mask is not None and attention_mask.dtype == torch.bool and base_name == "sdpa":
        # torch's sdpa converts a boolean mask on every call (~1 ms at batch 32 x 128 on a CPU
        # core): convert it once for all groups of the block
        attention_mask = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device).masked_fill_(
            ~attention_mask, torch.finfo(query.dtype).min)
    q_all, k_all, v_all = query[..., 0], key[..., 0], value[..., 0]  # [b, D, n]
    outs, qs, vs, hs = [], 0, 0, 0
    for count, dq, dv in groups:
        v = v_all[:, vs:vs + count * dv].unflatten(1, (count, dv)).transpose(-1, -2)  # [b, c, n, dv]
        if not dq and bias is None and not getattr(module, "is_causal", False) and not (dropout and module.training):
            # no query/key left: zero scores, i.e. every query attends uniformly over the keys the
            # mask lets through -- one masked mean of the values, not an n x n attention
            outs.append(_uniform(v, attention_mask, q_all.shape[-1]).flatten(-2))
            vs, hs = vs + count * dv, hs + count
            continue
        if dq:
            q = q_all[:, qs:qs + count * dq].unflatten(1, (count, dq)).transpose(-1, -2)
            k = k_all[:, qs:qs + count * dq].unflatten(1, (count, dq)).transpose(-1, -2)
        else:  # causal, biased or with dropout: the attention function with zero scores
            q = q_all.new_zeros(q_all.shape[0], count, q_all.shape[-1], 1)
            k = k_all.new_zeros(k_all.shape[0], count, k_all.shape[-1], 1)
        extra = dict(kwargs)
        if bias is not None:
            extra["position_bias"] = bias[:, hs:hs + count]
        out, _ = base(module, q, k, v, attention_mask, scaling=scaling, dropout=dropout, **extra)
        outs.append(out.flatten(-2))  # [b, n, c * dv]
        qs, vs, hs = qs + count * dq, vs + count * dv, hs + count
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)), None


def _uniform(value: torch.Tensor, mask: torch.Tensor | None, q_len: int) -> torch.Tensor:
    """softmax(0 + mask) @ value for a mask that treats every query alike (padding of the keys:
    bidirectional and cross attention): [b, c, nk, dv] -> [b, q_len, c, dv]."""
    if mask is None:
        mean = value.mean(-2, keepdim=True)
    else:
        row = mask[..., :1, :]  # [b, 1, 1, nk]: the keys every query may see
        if row.dtype == torch.bool:
            row = torch.zeros(row.shape, dtype=value.dtype, device=value.device).masked_fill_(
                ~row, torch.finfo(value.dtype).min)
        mean = torch.matmul(torch.softmax(row.to(value.dtype), dim=-1), value)  # [b, c, 1, dv]
    return mean.transpose(1, 2).expand(-1, q_len, -1, -1)


def _eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The stock eager computation of the block's own model family (its modeling module's
    `eager_attention_forward`, pinned by tests/test_stack_contract.py), else the usual one."""
    import sys

    stock = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if stock is not None:
        return stock(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    scores = torch.matmul(query, key.transpose(-1, -2)) * (1.0 if scaling is None else scaling)
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = torch.nn.functional.dropout(scores.softmax(-1), p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(UNEVEN, uneven_attention)
