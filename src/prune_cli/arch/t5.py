"""T5 and its descendants (Raffel et al. 2020): T5 / mT5 share one relative-position bias per stack,
UMT5 gives every block its own table, LongT5's local attention cannot lose heads physically."""

from __future__ import annotations

import inspect
from dataclasses import replace

import torch
from torch import nn

from prune_cli.arch.base import AttentionLayout, Family, FFNLayout


def _blocks(config) -> tuple[int, ...]:
    enc = int(config.num_layers)
    dec = int(getattr(config, "num_decoder_layers", None) or enc)
    return enc + 2 * dec, enc  # the whole model, or the encoder alone (T5EncoderModel)


T5 = Family(
    name="t5",
    model_types=("t5", "mt5"),
    structure="seq2seq",
    attention=(AttentionLayout("q", "k", "v", "o", "key_value_proj_dim", ("n_heads",), ("inner_dim",)),),
    ffn=(FFNLayout(("wi_0", "wi_1"), "wo"), FFNLayout(("wi",), "wo")),  # v1.1 / mT5 gated FFN, T5
    cross_names=frozenset({"EncDecAttention"}),
    expected_blocks=_blocks,
)
# UMT5 views q/k/v with its head count: whole heads only
UMT5 = replace(T5, name="umt5", model_types=("umt5",), dims=False)
LONGT5 = replace(T5, name="longt5", model_types=("longt5",), dims=False, surgery=False, expected_blocks=None)


# ---- the shared position bias: what surgery installs on a T5 block that lost heads --------
def takes_shared_bias(module: nn.Module) -> bool:
    """T5 and mT5 compute the relative-position bias once per stack (first layer, every head) and
    pass it down to the later layers through `position_bias`; UMT5 gives each block its own."""
    return hasattr(module, "has_relative_attention_bias") and "position_bias" in inspect.signature(
        type(module).forward).parameters


def stock_forward(module: nn.Module):
    """The class's own forward, bound to `module` (the instance attribute is our stand-in)."""
    return type(module).forward.__get__(module)


class SharedBiasHeads:
    """Forward of a T5 block that lost heads: it takes its own heads' rows of the stack's shared
    position bias and hands the FULL bias on, so later blocks (pruned differently, or not at all)
    still find every head's row. The first block keeps the whole bias table for the same reason.

    The bias is found by parameter name (`position_bias`, bound through the stock signature, so
    positional and keyword calls both work) and returned as the second output; both are pinned by
    `tests/test_stack_contract.py`, and `check_bias` raises if a release moves it.
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
