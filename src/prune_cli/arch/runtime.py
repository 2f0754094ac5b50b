"""The forward-time parts of a pruned model, in ONE file that imports only torch and transformers.

prune-cli runs with it, and every export ships a copy of it (`modeling_pruned.py`, with the model's
classes appended: `prune_cli.export.standalone`), so a pruned model loads with plain transformers
(`AutoModel*.from_pretrained(folder, trust_remote_code=True)`) where prune-cli is not installed. So
this module may import nothing of prune-cli, and what it defines is everything a pruned model
needs beyond the stock modeling code:

* heads of unequal sizes and grouped-query blocks whose groups kept unequal numbers of query heads
  (`uneven_attention`, registered with transformers' `AttentionInterface`);
* the stand-in forward of an attention block that kept no heads (`EmptyAttention`);
* T5's shared relative-position bias for blocks that lost heads (`SharedBiasHeads`);
* GRAIN's factorised word embeddings (`FactorizedEmbedding`; Yang et al., ACL 2023);
* `describe` / `apply_structure`: the shapes, attributes and stand-ins that distinguish a pruned
  model from the stock model its config builds, as JSON for its config, and their re-application to
  a freshly built stock model (before its weights load).

Heads of unequal sizes. Stock attention modules (BERT, RoBERTa, DistilBERT, BART, Marian, T5...)
all do the same thing: project, `view(..., -1, head_size)`, call the function
`ALL_ATTENTION_FUNCTIONS` holds under `config._attn_implementation`, and `reshape(..., -1)` the
result into the output projection. A block whose heads lost different numbers of dimensions cannot
be described by one head size, so surgery gives it head size 1 (q, k and v then arrive as one
"head" per dimension, whatever their counts) and a view of the model config whose
`_attn_implementation` names `UNEVEN`. That function regroups the dimensions into the block's real
heads (the pruned weights hold heads of equal (qk, vo) size side by side) and runs the model's OWN
attention function (eager, sdpa...) once per group, on zero-copy views, with the block's original
scale 1/sqrt(dense head size). Query/key size 0 gives the uniform attention the gated model
computes: a masked mean of the values (one zero query/key dimension through the attention function
where the mask differs per query: causal, biased or dropout). Everything else -- the mask, the KV
cache, dropout, T5's position bias (sliced per group) -- is the stock code's.

Why groups rather than padding every head of a layer to its largest size: padding keeps zero
rows as parameters (the saved model would be larger than its kept units) and spends FLOPs on
them; the measured comparison is in docs/benchmarks.md.
"""

from __future__ import annotations

import inspect
import warnings

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.pytorch_utils import Conv1D

UNEVEN = "prune_cli_uneven"
#: the config key `describe`'s JSON is saved under
STRUCTURE_KEY = "prune_cli_structure"


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


# ---- an attention block that kept no heads ------------------------------------------------------
class EmptyAttention:
    """Forward of an attention block that kept no heads (any family).

    The stock forward cannot run with zero heads (`view(..., -1, head_dim)` of an empty tensor is
    ambiguous), and a hand-written stand-in has to re-implement whatever the release does with its
    arguments: the KV cache (a decoder self-attention must still advance its cache layer, or the
    past length later steps read -- T5's position bias among them -- is wrong), cache positions,
    the returned tuple. So the STOCK forward runs, with one stand-in head: zero query/key/value
    projections and a zero output weight with the block's real output bias. These are not
    parameters (nothing is saved, counted or trained, except the real bias). The head's values are
    0, so the block outputs exactly its output bias -- what the gated model computes with every
    gate of the block at 0 -- whatever the cache, the mask or the attention kernel.

    `spec` (JSON, built by `prune_cli.arch.empty.stand_in`, saved in exports): `like`, the block's
    projection whose dtype and device the zeros take; `zeros`, {attribute: width} of the stand-in
    projections; `bias_from`, {attribute: the projection whose bias a stand-in adds}; `values`,
    {attribute: int} swapped in for the call (head size, head counts); `config_counts`, the head
    counts the forward reads from the shared model config; `o_attr`, the output projection inside
    the block (None: it lives outside, BERT, and the block outputs no features).
    """

    def __init__(self, module: nn.Module, spec: dict):
        self.module_ref = [module]  # a list keeps this a plain object, not a registered submodule
        self.spec = spec
        self.o_attr = spec.get("o_attr")
        like = getattr(module, spec["like"])
        bias_from = spec.get("bias_from", {})
        self.swaps = {a: Zeros(w, like, bias_of=getattr(module, bias_from[a]) if a in bias_from else None)
                      for a, w in spec["zeros"].items()}
        self.swaps.update(spec.get("values", {}))
        if spec.get("config_counts"):
            self.swaps["config"] = BlockConfig(module.config, spec["config_counts"])

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


class Zeros(nn.Module):
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


# ---- T5's shared position bias -----------------------------------------------------------------
def stock_forward(module: nn.Module):
    """The class's own forward, bound to `module` (the instance attribute is our stand-in)."""
    return type(module).forward.__get__(module)


class SharedBiasHeads:
    """Forward of a T5 block that lost heads: it takes its own heads' rows of the stack's shared
    position bias and hands the FULL bias on, so later blocks (pruned differently, or not at all)
    still find every head's row. The first block keeps the whole bias table for the same reason.

    The bias is found by parameter name (`position_bias`, bound through the stock signature, so
    positional and keyword calls both work) and returned as the second output; both are pinned by
    prune-cli's tests, and `check_bias` raises if a release moves it.
    """

    def __init__(self, module: nn.Module, heads: list[int], run=None):
        self.module_ref = [module]  # a list keeps this a plain object, not a registered submodule
        self.heads = torch.tensor(heads, dtype=torch.long, device="cpu")
        self.run = run  # what computes the block (default: the stock forward)
        self.signature = inspect.signature(type(module).forward)

    def _mine(self, bias: torch.Tensor) -> torch.Tensor:
        return bias.index_select(1, self.heads.to(bias.device))

    def __call__(self, *args, **kwargs):
        module = self.module_ref[0]
        run = self.run or stock_forward(module)
        bound = self.signature.bind(module, *args, **kwargs)
        incoming = bound.arguments.get("position_bias")
        if incoming is not None:
            bound.arguments["position_bias"] = self._mine(incoming)
            out = run(*bound.args[1:], **bound.kwargs)
            check_bias(module, out, self._mine(incoming))
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
                f"{transformers_version()}): prune-cli's T5 surgery needs updating"
            )
        check_bias(module, out, self._mine(full[0]))
        return (out[0], full[0], *out[2:])


def check_bias(module: nn.Module, out, mine: torch.Tensor) -> None:
    """Fail loudly (never compute wrongly) if the stock T5 forward stops returning the bias second."""
    if not (isinstance(out, tuple) and len(out) >= 2 and isinstance(out[1], torch.Tensor)
            and out[1].shape == mine.shape):
        raise RuntimeError(
            f"{type(module).__name__}.forward no longer returns (output, position_bias, ...) "
            f"(transformers {transformers_version()}): prune-cli's T5 surgery needs updating"
        )


def transformers_version() -> str:
    import transformers

    return transformers.__version__


# ---- GRAIN's factorised word embeddings --------------------------------------------------------
class FactorizedEmbedding(nn.Module):
    """ids -> proj(embed(ids)): an nn.Embedding of width r followed by a bias-free r -> d map. GRAIN
    (Yang et al., ACL 2023, arXiv:2212.07634; official code airaria/GRAIN), with `method.embed_rank`,
    replaces the word embeddings E (vocab x d) by E_r (vocab x r) times P (r x d)."""

    def __init__(self, num_embeddings: int, rank: int, dim: int, padding_idx: int | None = None):
        super().__init__()
        self.embed = nn.Embedding(num_embeddings, rank, padding_idx=padding_idx)
        self.proj = nn.Linear(rank, dim, bias=False)

    @property
    def weight(self) -> torch.Tensor:
        """The full table the factors stand for (for code that reads `.weight`, e.g. its dtype)."""
        return self.embed.weight @ self.proj.weight.T

    @property
    def num_embeddings(self) -> int:
        return self.embed.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.proj.out_features

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(ids))


# ---- a pruned model's structure, as JSON -------------------------------------------------------
def module_spec(module: nn.Module) -> dict | None:
    """The constructor arguments of a module whose shapes pruning changes (None for any other)."""
    if isinstance(module, FactorizedEmbedding):
        return {"type": "factorized_embedding", "num": module.num_embeddings, "rank": module.embed.embedding_dim,
                "dim": module.embedding_dim, "padding_idx": module.embed.padding_idx}
    if isinstance(module, Conv1D):
        return {"type": "conv1d", "nf": int(module.nf), "nx": int(module.nx)}
    if isinstance(module, nn.Linear):
        return {"type": "linear", "in": module.in_features, "out": module.out_features, "bias": module.bias is not None}
    if isinstance(module, nn.Embedding):
        return {"type": "embedding", "num": module.num_embeddings, "dim": module.embedding_dim,
                "padding_idx": module.padding_idx}
    return None


def build_module(spec: dict, like: nn.Module) -> nn.Module:
    """A module of `spec`'s shapes, in the dtype and on the device of the module it replaces (its
    weights are loaded afterwards)."""
    kind = spec["type"]
    with warnings.catch_warnings():  # "Initializing zero-element tensors is a no-op": an emptied block
        warnings.simplefilter("ignore", UserWarning)
        new = _new_module(kind, spec)
    ref = next(iter(like.parameters()), None)
    return new if ref is None else new.to(device=ref.device, dtype=ref.dtype)


def _new_module(kind: str, spec: dict) -> nn.Module:
    if kind == "linear":
        new = nn.Linear(spec["in"], spec["out"], bias=spec["bias"])
    elif kind == "conv1d":
        new = Conv1D(spec["nf"], spec["nx"])
    elif kind == "embedding":
        new = nn.Embedding(spec["num"], spec["dim"], padding_idx=spec["padding_idx"])
    elif kind == "factorized_embedding":
        new = FactorizedEmbedding(spec["num"], spec["rank"], spec["dim"], spec["padding_idx"])
    else:
        raise ValueError(f"unknown module type {kind!r} in a pruned model's structure")
    return new


def describe(model: nn.Module, stock: nn.Module) -> dict:
    """What `model` (pruned) holds that `stock` (the same class built from the same config, e.g. on
    the meta device) does not: modules of other shapes, integer attributes surgery changed (head
    counts and sizes), and each attention block's runtime state (unequal heads, key/value index,
    its own view of the config, stand-in forwards). JSON; `apply_structure` re-applies it."""
    reference = dict(stock.named_modules())
    modules, attrs, blocks = {}, {}, {}
    for name, module in model.named_modules():
        other = reference.get(name)
        if other is None:  # inside a module that is itself replaced (FactorizedEmbedding's factors)
            continue
        spec = module_spec(module)
        if spec is not None and spec != module_spec(other):
            modules[name] = spec
            continue
        mine, theirs = vars(module), vars(other)
        changed = {k: v for k, v in mine.items()
                   if type(v) is int and not k.startswith("_") and theirs.get(k) != v}
        if changed:
            attrs[name] = changed
        block = _block_state(module)
        if block:
            blocks[name] = block
    return {"modules": modules, "attrs": attrs, "blocks": blocks}


def _block_state(module: nn.Module) -> dict:
    state, own = {}, module.__dict__
    if own.get("_prune_cli_groups"):
        state["groups"] = [list(g) for g in own["_prune_cli_groups"]]
        state["head_dim"] = int(own["_prune_cli_head_dim"])
    if own.get("_prune_cli_kv_index") is not None:
        state["kv_index"] = [int(i) for i in own["_prune_cli_kv_index"].tolist()]
    config = own.get("config")
    if isinstance(config, BlockConfig):
        state["config"] = {"uneven": isinstance(config, UnevenConfig), "overrides": dict(config._overrides)}
    forward = own.get("forward")
    if isinstance(forward, SharedBiasHeads):
        state["shared_bias"] = [int(h) for h in forward.heads.tolist()]
        forward = forward.run
    if isinstance(forward, EmptyAttention):
        state["empty"] = forward.spec
    return state


def apply_structure(model: nn.Module, structure: dict) -> nn.Module:
    """Give a freshly built stock model the shapes and runtime state `describe` recorded (its
    weights load afterwards). Paths recorded on a model with a task head also apply to its bare
    base model (`AutoModel`), and the other way round."""
    def find(path):
        prefix = getattr(model, "base_model_prefix", "")
        for candidate in (path, path[len(prefix) + 1:] if prefix and path.startswith(prefix + ".") else None,
                          f"{prefix}.{path}" if prefix else None):
            if candidate is None:
                continue
            try:
                model.get_submodule(candidate)
                return candidate
            except AttributeError:
                continue
        return None

    for path, spec in structure.get("modules", {}).items():
        where = find(path)
        if where is None:
            continue  # a part this class does not have (the task head, for the bare model)
        parent, _, attr = where.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        setattr(owner, attr, build_module(spec, getattr(owner, attr)))
    for path, values in structure.get("attrs", {}).items():
        where = find(path)
        if where is not None:
            module = model.get_submodule(where)
            for attr, value in values.items():
                setattr(module, attr, value)
    for path, state in structure.get("blocks", {}).items():
        where = find(path)
        if where is not None:
            restore_block(model.get_submodule(where), model.config, state)
    return model


def restore_block(module: nn.Module, config, state: dict) -> None:
    """One attention block's runtime state from `_block_state`'s JSON."""
    if "groups" in state:
        module._prune_cli_groups = tuple(tuple(g) for g in state["groups"])
        module._prune_cli_head_dim = state["head_dim"]
    if "kv_index" in state:
        module._prune_cli_kv_index = torch.tensor(state["kv_index"], dtype=torch.long, device="cpu")
    if "config" in state:
        kind = UnevenConfig if state["config"]["uneven"] else BlockConfig
        module.config = kind(config, state["config"]["overrides"])
        if state["config"]["uneven"]:
            install_guard(module)
    empty = EmptyAttention(module, state["empty"]) if "empty" in state else None
    if "shared_bias" in state:
        module.forward = SharedBiasHeads(module, state["shared_bias"], empty)
    elif empty is not None:
        module.forward = empty


AttentionInterface.register(UNEVEN, uneven_attention)
