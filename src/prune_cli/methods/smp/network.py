"""SMP's pruner network, what it reads and the file it is kept in.

The network scores one attention map of the PRETRAINED model per head (Zhang et al., "Know What
You Don't Need: Single-Shot Meta-Pruning for Attention Heads", AI Open 2021, arXiv:2011.03770;
official code thunlp/SMP). It lives apart from the method because two stages use it: the
`meta_train` stage trains it (`prune_cli.methods.smp.meta_train`) and the `prune` stage scores
with it (`prune_cli.methods.smp.method`); pruner.pt is the only thing passed between them.

Two departures from the reference, both so that it runs on any model and any length:

* depth follows the canvas: the reference's network needs 128 x 128 maps (five stride-2
  convolutions down to 4 x 4, then a 4 x 4 one). Here the map is drawn on a canvas of
  `method.map_size` (a power of two, 128 by default, recorded in pruner.pt) with log2(size) - 2
  stride-2 convolutions; at 128 the network is the reference's, weight for weight.
* maps of any length: a map of n <= canvas tokens is zero-padded to the canvas -- exactly what
  the reference sees, as it pads every input to 128 tokens and zeroes padded query rows (padded
  key columns hold 0 after the softmax). A longer map is area-averaged down to the canvas and
  multiplied by n / canvas, so that its rows still sum to 1 as an attention row does -- in
  meta-training only: pruning refuses a `task.max_length` above the pruner's canvas, since the
  kept heads would then change with the batch's padded length.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from prune_cli.errors import ConfigError

#: what each output channel of the pruner scores: sentence-pair tasks, single-sentence tasks
CHANNELS = ("pair", "single")
FORMAT = "prune-cli smp pruner v1"


class MapScorer(nn.Module):
    """The pruner network: one attention map in, one score per channel in (0, 2) out.

    DCGAN-discriminator shape as in the reference: 4 x 4 stride-2 convolutions that double the
    width (batch norm from the second on, LeakyReLU 0.2), a final 4 x 4 convolution to two
    channels, sigmoid x 2; weights drawn from N(0, 0.01), batch-norm scales from N(1, 0.01)."""

    def __init__(self, map_size: int = 128, width: int = 8):
        super().__init__()
        if map_size < 8 or map_size & (map_size - 1):
            raise ValueError(f"map_size must be a power of two >= 8, got {map_size}")
        self.map_size, self.width = int(map_size), int(width)
        layers: list[nn.Module] = [nn.Conv2d(1, width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
        channels = width
        for _ in range(int(math.log2(map_size)) - 3):
            layers += [nn.Conv2d(channels, 2 * channels, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * channels),
                       nn.LeakyReLU(0.2)]
            channels *= 2
        layers += [nn.Conv2d(channels, len(CHANNELS), 4, 1, 0, bias=False), nn.Sigmoid()]
        self.main = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """maps [N, n, n] (any n) -> scores [N, 2] (columns in CHANNELS order)."""
        return self.main(fit_canvas(maps, self.map_size).unsqueeze(1)).flatten(1) * 2


def fit_canvas(maps: torch.Tensor, size: int) -> torch.Tensor:
    """[N, n, n] -> [N, size, size]: zero-padded when n <= size, area-averaged (rows still sum
    to 1) when longer."""
    n = maps.shape[-1]
    if n <= size:
        return F.pad(maps, (0, size - n, 0, size - n))
    return F.adaptive_avg_pool2d(maps, size) * (n / size)


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """sdpa and the fused kernels return no attention probabilities: switch the model to the
    eager kernel for the passes that read them, and back."""
    before = getattr(model.config, "_attn_implementation", None)
    if before in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def model_inputs(batch: dict) -> dict:
    """What the encoder reads: never the labels (SMP uses none, in scoring or meta-training)."""
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def attention_maps(model: nn.Module, batch: dict):
    """(maps [L, B, H, n, n], encoder outputs) of one batch, rows of padded query positions
    zeroed. `model` may be any head class: its base model runs."""
    base = getattr(model, "base_model", model)
    inputs = model_inputs(batch)
    with eager_attention(model), torch.no_grad():
        out = base(**inputs, output_attentions=True)
    if not out.attentions or any(a is None for a in out.attentions):
        raise RuntimeError(f"{type(base).__name__} returned no attention maps with output_attentions=True under "
                           "eager attention: this transformers release changed how they are returned")
    maps = torch.stack(out.attentions)
    mask = inputs.get("attention_mask")
    if mask is not None:
        maps = maps * mask[None, :, None, :, None].to(maps.dtype)
    return maps, out


def geometry(space) -> dict:
    """What a pruner is trained for: layers x heads of the dense model (SMP: encoder blocks only)."""
    heads = sorted({b.num_heads for b in space.blocks})
    return {"layers": len(space.blocks), "heads": heads[0] if len(heads) == 1 else heads}


def save_pruner(path: Path, net: MapScorer, model_geometry: dict, info: dict) -> None:
    """pruner.pt: plain tensors and numbers (loadable with weights_only=True)."""
    record = {"format": FORMAT, "state_dict": net.state_dict(),
              "network": {"map_size": net.map_size, "width": net.width},
              "model": model_geometry, **info}
    from prune_cli.checkpoints import atomic_write

    atomic_write(Path(path), lambda f: torch.save(record, f))


def read_pruner(path) -> dict:
    """The record of a pruner file, or ConfigError naming what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("method.pruner", str(path), "a pruner.pt written by a meta_train run "
                          "(prune-run method=smp pipeline=[meta_train] ...)")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise ConfigError("method.pruner", str(path), f"a pruner.pt written by a meta_train run (unreadable: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ConfigError("method.pruner", str(path), "a pruner.pt written by a meta_train run (this file is not one)")
    return record


def load_network(record: dict) -> MapScorer:
    net = MapScorer(**record["network"])
    net.load_state_dict(record["state_dict"])
    return net
