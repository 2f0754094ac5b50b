"""The files a run leaves behind for people and scripts: heads.json, heads.png, metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import torch


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


def write_json(path: Path, obj: dict) -> None:
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_default) + "\n")
    tmp.replace(path)  # atomic: a crash never leaves half a file


def _default(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def plot_heads(path: Path, space, mask: torch.Tensor, scores: torch.Tensor | None, title: str = "") -> Path:
    """Layer x head map, one panel per attention kind: colour = score, crossed cell = pruned head."""
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
        fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
