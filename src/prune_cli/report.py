"""The files a run leaves behind for people and scripts: heads.json, heads.png, metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from prune_cli.checkpoints import atomic_write, writing
from prune_cli.surgery import count_params
from prune_cli.units import UnitSpace


def heads_record(space, mask: torch.Tensor, scores: torch.Tensor | None, **extra) -> dict:
    """heads.json: which heads were kept, per block, in the ORIGINAL (dense) head layout."""
    mask = mask.bool().cpu()
    record = {
        "heads_total": space.total,
        "heads_kept": int(mask.sum()),
        "blocks": space.describe(),
        "mask": [[int(x) for x in m] for m in space.split(mask.int())],
        "kept": [int(i) for i in torch.nonzero(mask).flatten()],
        "scores": None if scores is None else [[float(x) for x in s] for s in space.split(scores.double().cpu())],
    }
    record.update(extra)
    return record


def units_record(space, scores) -> dict:
    """units.json: what is left of every head and FFN, the kept units per kind (as ranges over the
    dense index, the same strings the pruned config stores), and the scores they were ranked by."""
    from prune_cli.units import ranges

    record = space.summary()
    record["kept"] = {k: ranges(space.kept(k).nonzero().flatten().tolist()) for k in ("head", "qk", "vo", "ffn")}
    if isinstance(scores, dict):
        record["scores"] = {k: [round(float(x), 8) for x in v] for k, v in scores.items()}
    return record


def plot_units(path: Path, space, title: str = "") -> Path:
    """What is left inside each head and FFN: per layer, each head's value/output dimensions kept
    (colour) with its query/key count written in, and the FFN width kept beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    summary = space.summary()
    kinds = [k for k in ("encoder", "decoder", "cross") if any(b["kind"] == k for b in summary["blocks"])]
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(4.8 * len(kinds) + 3.2, 3.4), squeeze=False,
                             gridspec_kw={"width_ratios": [4] * len(kinds) + [2]})
    for ax, kind in zip(axes[0], kinds):
        blocks = [b for b in summary["blocks"] if b["kind"] == kind]
        layers, width = max(b["layer"] for b in blocks) + 1, max(len(b["vo"]) for b in blocks)
        grid = np.full((layers, width), np.nan)
        for b in blocks:
            for h, (q, v) in enumerate(zip(b["qk"], b["vo"])):
                grid[b["layer"], h] = v / b["head_dim"]
                ax.text(h, b["layer"], str(q) if v else "x", ha="center", va="center", fontsize=7,
                        color="white" if v / b["head_dim"] < 0.5 else "black")
        im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xlabel("head (number: query/key dims kept; x: removed)")
        ax.set_ylabel("layer")
        ax.set_title(f"{kind}: value dims kept (fraction)")
        fig.colorbar(im, ax=ax, fraction=0.046, label="value/output dims kept (fraction of the head)")
    ax = axes[0][-1]
    ffns = summary["ffns"]
    labels = [f"{f['kind'][0]}{f['layer']}" for f in ffns]
    ax.barh(range(len(ffns)), [f["kept"] / f["width"] for f in ffns], color="tab:orange")
    ax.set_yticks(range(len(ffns)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("FFN neurons kept (fraction)")
    fig.suptitle(title or f"density {summary['density']:.3f}, {summary['heads_left']} heads left")
    fig.tight_layout()
    with writing(path):  # a full disk: one line
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def versions() -> dict:
    """The stack a result was produced with (metrics.json `versions`): results tables quote it,
    since a release can change numbers (transformers 5.24 once changed cached decoding)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from prune_cli.bench import git_commit

    record = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "accelerate", "datasets", "prune-cli"):
        try:
            record[dist] = version(dist)
        except PackageNotFoundError:
            record[dist] = None
    record["git_commit"] = git_commit()
    return record


def write_json(path: Path, obj: dict, indent: int | None = 2, **atomic) -> None:
    """Atomic (a crash never leaves half a file; a full disk is one line): `atomic` are
    `checkpoints.atomic_write`'s options (a checksum, the previous generation kept)."""
    atomic_write(Path(path), json.dumps(obj, indent=indent, default=_default) + "\n", **atomic)


def _default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def plot_curve(path: Path, curve: list[dict], metric: str, title: str = "") -> Path:
    """The metric against the share of heads pruned (prune_curve: no retraining in between)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(curve, key=lambda p: p["fraction_pruned"])
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot([100 * p["fraction_pruned"] for p in points], [p["metrics"].get(metric) for p in points], marker="o")
    ax.set_xlabel("heads pruned (%)")
    ax.set_ylabel(metric)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with writing(path):  # a full disk: one line
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_heads(path: Path, space, mask: torch.Tensor, scores: torch.Tensor | None, title: str = "",
               label: str = "score") -> Path:
    """Layer x head map, one panel per attention kind: colour = score (the colour bar says what:
    `label`), crossed cell = pruned head; without scores, kept heads are one colour and pruned ones
    another."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    kinds = [k for k in ("encoder", "decoder", "cross") if any(b.kind == k for b in space.blocks)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.2), squeeze=False)
    masks = space.split(mask.bool().cpu())
    vals = space.split(scores.double().cpu()) if scores is not None else masks
    for ax, kind in zip(axes[0], kinds):
        blocks = [(b, m, v) for b, m, v in zip(space.blocks, masks, vals) if b.kind == kind]
        n_layers = max(b.layer for b, _, _ in blocks) + 1
        width = max(max(b.heads, default=-1) for b, _, _ in blocks) + 1
        width = max(width, max(b.num_heads for b, _, _ in blocks))
        grid = np.full((n_layers, max(width, 1)), np.nan)
        kept = np.zeros_like(grid, dtype=bool)
        for b, m, v in blocks:
            for j, h in enumerate(b.heads):
                grid[b.layer, h] = float(v[j])
                kept[b.layer, h] = bool(m[j])
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        for (r, c), k in np.ndenumerate(kept):
            if not k:
                ax.text(c, r, "x", ha="center", va="center", color="red", fontsize=9, fontweight="bold")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{kind}: {int(kept.sum())}/{sum(b.num_heads for b, _, _ in blocks)} kept")
        bar = fig.colorbar(im, ax=ax, fraction=0.046, label=label if scores is not None else "")
        if scores is None:  # a 0/1 map: name the two colours, not a scale
            bar.set_ticks([0, 1], labels=["pruned", "kept"])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with writing(path):  # a full disk: one line
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def unit_metrics(model: torch.nn.Module, space: UnitSpace, scope: str = "all") -> dict:
    """What is left, in the terms of a density budget: the kept fraction of the attention + FFN
    weights (`density`), those weights, the encoder's parameters without its embeddings, and the
    heads that still hold a value dimension."""
    kept, dense = space.weights(scope)
    return {"density": round(kept / dense, 6) if dense else 1.0, "weights_kept": kept, "weights_dense": dense,
            "params_encoder": encoder_params(model), "heads_left": int(space.kept("head").sum())}


def encoder_params(model: torch.nn.Module) -> int:
    """Parameters of the encoder stack (the whole base model if it has no `encoder`), embeddings
    excluded: what pruning can shrink, as papers report it."""
    base = getattr(model, "base_model", model)
    encoder = base.get_encoder() if hasattr(base, "get_encoder") else None
    encoder = encoder or getattr(base, "encoder", None) or getattr(base, "transformer", None) or base
    embeddings = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    return sum(p.numel() for p in encoder.parameters() if id(p) not in embeddings)


def dense_params(model: torch.nn.Module) -> int:
    """Parameters of `model` before any pruning (built from its config on the meta device)."""
    from prune_cli.arch.build import build_model
    from prune_cli.units import _dense_config

    if UnitSpace.from_model(model).removed_params() == 0:
        return count_params(model)
    with torch.device("meta"):
        return count_params(build_model(_dense_config(model.config), type(model)))
