"""A content-addressed cache of work that many runs of a sweep repeat: the dense fine-tune a
scorer starts from (and GRAIN's teacher), and a one-shot scorer's head scores.

A K x method sweep otherwise fine-tunes the same base model once per point. Entries are keyed by
a SHA-256 of everything that determines them -- the starting weights (their bytes), the
tokenised training rows (their bytes), the trainer config, the seed, the stage's epochs, the
method config for scores, and the code (the bytes of prune-cli's modules, torch and
transformers versions) --
so a hit is the result the run would have computed. Concurrent jobs share it safely: one job
computes an entry while holding its lock file (`fcntl.flock`, which works on local disks and on
NFS), the others wait for it and read the result; entries appear by an atomic rename, so a job
killed mid-write leaves no half entry.

Off unless `cache.dir` is set (`cache.dir=~/.cache/prune-cli`, or per sweep); clear it with
`rm -rf <cache.dir>` (`<dir>/finetune/<key>/`, `<dir>/scores/<key>.pt`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
from pathlib import Path

import torch

from prune_cli.checkpoints import atomic_write, write_folder

#: trainer keys that change how a run is watched, not what it computes
WATCH_KEYS = ("progress_bar", "log_every", "eval_every", "save_every", "num_workers", "eval_batch_size")


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dataset_digest(dataset) -> str | None:
    """SHA-256 of the tokenised rows (a `datasets.Dataset`'s Arrow table, serialised); None for
    another kind of dataset (nothing is cached then)."""
    try:
        import pyarrow as pa

        table = dataset.with_format("arrow")[:]
    except (AttributeError, TypeError, ImportError):
        return None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def code_version() -> dict:
    """prune-cli's own source (the bytes of its modules, not a commit id: a commit that only
    touches docs or tests keeps the cache valid), torch and transformers."""
    from importlib.metadata import PackageNotFoundError, version
    from importlib.resources import files

    h = hashlib.sha256()
    root = Path(str(files("prune_cli")))
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    out = {"prune-cli": h.hexdigest()}
    for dist in ("torch", "transformers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class Cache:
    def __init__(self, root):
        self.root = Path(root).expanduser()

    @contextlib.contextmanager
    def locked(self, kind: str, name: str):
        """Hold `<root>/<kind>/<name>.lock` exclusively (blocks while another job holds it)."""
        folder = self.root / kind
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # ---- fine-tuned models: a folder + result.json --------------------------------------------
    def model_entry(self, name: str) -> Path | None:
        entry = self.root / "finetune" / name
        return entry if (entry / "result.json").is_file() else None

    def put_model(self, name: str, save, result: dict) -> Path:
        """`save(folder)` writes the model; the entry appears whole or not at all."""
        def fill(tmp: Path) -> None:
            save(tmp / "model")
            (tmp / "result.json").write_text(json.dumps(result, indent=1, default=str))

        return write_folder(self.root / "finetune" / name, fill)

    # ---- scores: one tensor or {kind: tensor} -------------------------------------------------
    def get_scores(self, name: str):
        path = self.root / "scores" / f"{name}.pt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def put_scores(self, name: str, scores, compute: dict | None = None) -> None:
        """`compute`: what scoring cost (accounting.FIELDS), read back by `scores_compute`."""
        path = self.root / "scores" / f"{name}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        if compute is not None:  # before the scores: an entry never lacks it once it is visible
            atomic_write(path.with_suffix(".json"), json.dumps(compute))
        atomic_write(path, lambda f: torch.save(scores, f))

    def scores_compute(self, name: str) -> dict | None:
        path = self.root / "scores" / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None
