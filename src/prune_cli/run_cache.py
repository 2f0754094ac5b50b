"""The sweep cache (`cache.dir`) as one run uses it: the dense fine-tune a run starts with and a
scorer's one-shot scores, looked up by what determines them, so the jobs of a K x method sweep
fine-tune and score each base model once (`prune_cli.cache` is the store: entries, locks,
digests). A hit says so in one line, counts in `log.jsonl` (`cache/hit`), and hands back what the
entry cost when it was computed (`spent`: the stage reports it as `cached_compute`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from prune_cli import accounting, distributed
from prune_cli.accounting import METER
from prune_cli.cache import WATCH_KEYS, Cache, code_version, dataset_digest, key, tensor_digest
from prune_cli.surgery import load_pruned, save_pruned


class RunCache:
    def __init__(self, cfg: DictConfig, train_rows: Callable[[], object], main: bool, log: Callable[[dict], None],
                 say: Callable[[str], None], spent: Callable[[dict], None]):
        root = cfg.get("cache", {}).get("dir")
        self.store = Cache(root) if root else None
        self.cfg, self.main = cfg, main
        self._rows, self._log, self._say, self._spent = train_rows, log, say, spent
        self._digest: str | None | bool = False  # not hashed yet

    def _data(self) -> str | None:
        """The training rows' digest, hashed once per run (every key of the run uses it)."""
        if self._digest is False:
            self._digest = dataset_digest(self._rows())
        return self._digest

    def _hit(self, line: str, cost: dict | None) -> None:
        self._log({"cache/hit": 1})
        self._say(f"cache hit: {line}")
        if cost:
            self._spent(cost)

    def finetune(self, model, tokenizer, seed: int, epochs, fit):
        """`fit(model)` trains `model` in place -> (model, result); a fine-tune of the same weights,
        rows, trainer settings, seed and epochs already in the cache is loaded instead, and a new one
        is stored (one job trains a key at a time: the others wait on its lock and load it)."""
        data = self._data() if self.store is not None else None
        if data is None:
            return model, fit(model)
        trainer = {k: v for k, v in OmegaConf.to_container(self.cfg.trainer, resolve=True).items()
                   if k not in WATCH_KEYS}
        name = key({"kind": "finetune", "weights": tensor_digest(model.state_dict()), "data": data,
                    "class": type(model).__name__, "trainer": trainer, "seed": seed, "epochs": epochs,
                    "code": code_version()})
        with self.store.locked("finetune", name) if self.main else contextlib.nullcontext():  # rank 0 decides
            entry = distributed.broadcast(self.store.model_entry(name) if self.main else None)
            if entry is None:
                before = METER.snapshot()
                result = fit(model)
                cost = accounting.since(before)
                with distributed.main_writes() as write:
                    if write:
                        self.store.put_model(name, lambda folder: save_pruned(model, folder, tokenizer),
                                             {**result, "compute": cost})
                return model, {**result, "cache": f"stored {name}"}
        loaded = load_pruned(entry / "model", auto_class=type(model))
        stored = json.loads((entry / "result.json").read_text())
        self._hit(f"the fine-tune is {entry} (not trained again)", stored.pop("compute", None))
        return loaded, {**stored, "cache": f"hit {name}"}

    def scores(self, model, space, units, compute, agreed):
        """One-shot scores: the cache's for the same weights, rows, method settings (and the files
        they name), seed, units, scope, kept units and batch size, or `agreed(compute)` stored."""
        data = self._data() if self.store is not None else None
        if data is None:
            return agreed(compute)
        method = OmegaConf.to_container(self.cfg.method, resolve=True)
        files = {k: file_digest(v) for k, v in method.items() if isinstance(v, str) and Path(v).is_file()}
        name = key({"kind": "scores", "weights": tensor_digest(model.state_dict()), "data": data,
                    "method": method, "files": files, "seed": self.cfg.seed, "units": units,
                    "scope": self.cfg.heads_scope, "masks": {k: v.tolist() for k, v in space.masks().items()},
                    "batch_size": int(self.cfg.trainer.batch_size), "code": code_version()})
        with self.store.locked("scores", name) if self.main else contextlib.nullcontext():
            scores = distributed.broadcast(self.store.get_scores(name) if self.main else None)
            if scores is None:
                before = METER.snapshot()
                scores = agreed(compute)
                cost = accounting.since(before)
                if self.main:
                    self.store.put_scores(name, scores, cost)
            else:
                cost = distributed.broadcast(self.store.scores_compute(name) if self.main else None)
                self._hit(f"{self.cfg.method.name} scores {name} (not scored again)", cost)
        return scores


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
