"""The contract every task family (GLUE, SQuAD, CoNLL, translation) fulfils.

The pipeline, trainer and pruning methods only ever talk to a task through this class, so a new
task family never needs pruning code of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from prune_cli import progress


@dataclass
class Splits:
    """Tokenised data: one training split and one or more evaluation splits.

    `train` and every value of `eval` are `datasets.Dataset` (or any map-style torch dataset) whose
    rows the task's `collate_fn` turns into model inputs *including the loss targets* (e.g.
    `labels`), so the trainer can call `model(**batch).loss` for every task.
    `eval_raw` keeps whatever the task needs to score predictions (untokenised examples,
    offsets, references); the trainer never looks at it.
    """

    train: Any
    eval: dict[str, Any]
    eval_raw: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class. Subclasses set `name`, `primary_metric` and override what differs.

    Life cycle, as the pipeline drives it:
      1. `Task(cfg.task)` then `validate()`  -- cheap checks (files, columns, names); raise
         `prune_cli.errors.ConfigError` before any model is loaded.
      2. `load_model(cfg.model)` -> (model, tokenizer)
      3. `splits(tokenizer)` -> Splits
      4. training uses `collate_fn(tokenizer)` over `Splits.train`
      5. `evaluate(model, tokenizer, splits, accelerator, batch_size)` -> flat dict of metrics,
         e.g. {"accuracy": 0.71, "accuracy_mm": 0.70}; keys for extra eval splits get a suffix.
    """

    name: str = "task"
    primary_metric: str = "accuracy"
    greater_is_better: bool = True
    #: inputs are sentence pairs (True), single texts (False) or neither (None); SMP's pruner
    #: has one output for each of the first two
    sentence_pair: bool | None = None
    #: per-example predictions of the last `evaluate` ({split: {"prediction": [...], "label": [...]}}),
    #: for tasks whose metric can be recomputed from them (`metric_on`); the pipeline saves them in
    #: predictions.json so that the collector can bootstrap a paired comparison of two runs
    predictions: dict | None = None
    #: the run's seed (set by `get_task`): draws the training rows unless task.subsample_seed is given
    seed: int = 0

    def primary_split(self) -> tuple[str | None, str]:
        """(evaluation split, metric name within it) of `primary_metric`: the split is None when
        the task has one; MNLI's `accuracy_mm` is (validation_mismatched, accuracy)."""
        return None, self.primary_metric

    def metric_on(self, predictions, labels) -> dict[str, float]:
        """The task's metrics on these examples alone (a bootstrap resample)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no per-example predictions")

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        #: how `max_train_samples` chose the training rows (written to metrics.json and subset.json)
        self.subset: dict | None = None

    def cap(self, split: str) -> int | None:
        return self.cfg.get("max_train_samples" if split == "train" else "max_eval_samples")

    def take(self, split: str, n: int, strata=None, whole: bool = True) -> list[int] | None:
        """Row indices to keep of a split of `n` rows (None = all of them).

        Training rows: `task.subsample` draws them -- `random` (default), `stratified` (the same
        share of every label; a regression score in quintiles) or `first` (the file's first N,
        which is a biased sample wherever a file is ordered: STS-B's first 1,000 training rows are
        all video captions) -- seeded by `task.subsample_seed` (default: the run's seed, so methods
        at one seed see the same rows and seeds differ in their rows too). Evaluation rows are the
        first `max_eval_samples`, the same for every run, so that runs pair example by example."""
        cap = self.cap(split)
        how = str(self.cfg.get("subsample", "random")) if split == "train" else "first"
        if not cap or cap >= n:
            if cap and split == "train":  # `whole=False`: the reader stopped at the cap (first N)
                self.subset = {"split": split, "subsample": how, "rows": int(n), "of": int(n) if whole else None,
                               "indices": list(range(n))}
            return None
        seed = self.seed if self.cfg.get("subsample_seed") is None else int(self.cfg.subsample_seed)
        if how == "first":
            idx = np.arange(cap)
        elif how == "random":
            idx = np.sort(np.random.default_rng(seed).choice(n, cap, replace=False))
        else:
            if strata is None:
                from prune_cli.errors import ConfigError

                raise ConfigError("task.subsample", how, f"random or first: {self.name} has no labels to stratify by")
            idx = stratified(np.asarray(strata), cap, seed)
        if split == "train":
            self.subset = {"split": split, "subsample": how, "seed": seed, "rows": int(cap), "of": int(n),
                           "indices": idx.tolist()}
        return idx.tolist()

    # 1 ------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError for missing/malformed local data. Must not load a model."""

    # 2 ------------------------------------------------------------------
    def auto_class(self):
        """The `transformers.AutoModelFor...` class for this task."""
        raise NotImplementedError

    def model_kwargs(self) -> dict:
        """Extra kwargs for `from_pretrained` (e.g. num_labels, problem_type)."""
        return {}

    def model_config(self, model_cfg: DictConfig):
        """The model's `PretrainedConfig`, read without weights (validation counts heads from it).
        From-scratch models (translation) override this to build the config from YAML."""
        from prune_cli.errors import ConfigError
        from prune_cli.models import load_config, resolve_source

        try:
            return load_config(model_cfg)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - unreadable config.json, unknown model type, ...
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ConfigError("model", resolve_source(model_cfg), f"a loadable Hugging Face model ({reason})") from None

    def load_model(self, model_cfg: DictConfig):
        from prune_cli.models import load_pretrained

        return load_pretrained(model_cfg, self.auto_class(), **self.model_kwargs())

    # 3-5 ----------------------------------------------------------------
    def splits(self, tokenizer) -> Splits:
        raise NotImplementedError

    def collate_fn(self, tokenizer) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def evaluate(self, model, tokenizer, splits: Splits, accelerator, batch_size: int) -> dict[str, float]:
        raise NotImplementedError


def read_text(path: Path, key: str = "task.data_dir", given: object = None) -> str:
    """A local data file as text: UTF-8 (plain or gzipped), a leading byte-order mark dropped (it
    would otherwise become part of the first token or column name). Bytes that are not UTF-8 are a
    DataError naming the file, the line and the bytes, raised while validating, before any model
    loads, instead of a UnicodeDecodeError traceback once training data is tokenised."""
    import gzip

    from prune_cli.errors import DataError

    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataError(key, str(given if given is not None else path), path, None,
                        f"a readable file ({err.strerror or type(err).__name__})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        bad = data[err.start : err.end + 3]
        raise DataError(key, str(given if given is not None else path), path, f"line {line}",
                        f"UTF-8 text (bytes {bad!r} at offset {err.start} are not UTF-8: re-encode the file, "
                        "e.g. iconv -f latin1 -t utf-8)") from None


def check_hub_splits(cfg: DictConfig, splits) -> None:
    """Every split the task reads from the Hub has a name in `task.hub_splits`."""
    from prune_cli.errors import ConfigError

    names = cfg.get("hub_splits") or {}
    for split in splits:
        if not names.get(split):
            raise ConfigError(f"task.hub_splits.{split}", names.get(split), "the Hub split name, e.g. validation")


def hub_dataset_available(cfg: DictConfig) -> bool:
    """False when `cfg.hub` can certainly not be loaded: offline (HF_HUB_OFFLINE=1, or the Hub cannot
    be reached) and not in the local datasets cache. Online we do not probe (load_dataset reports a
    wrong name itself, and a probe costs a round trip); offline the probe only reads the cache, so a
    miss fails in seconds instead of after the Hub client's retries."""
    from prune_cli.hub import offline

    if not offline():
        return True
    try:
        import datasets

        datasets.load_dataset_builder(str(cfg.hub), cfg.get("hub_config"), revision=cfg.get("hub_revision"))
    except (OSError, ValueError):  # ConnectionError (a cache miss offline), DatasetNotFoundError
        return False
    return True


def batched_outputs(
    model, dataset, collate_fn, accelerator, batch_size: int, names: tuple[str, ...]
) -> dict[str, list[np.ndarray]]:
    """Per-row model outputs over a map-style dataset, in its order, each cut to the row's own
    length (dynamic padding makes batches differ in width). Under accelerate every process runs a
    shard and the pieces are gathered. Shared by the token-level task families (SQuAD, CoNLL)."""
    from torch.utils.data import DataLoader

    lengths = [len(ids) for ids in dataset["input_ids"]]
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn)
    if accelerator is not None:
        loader = accelerator.prepare_data_loader(loader)
        net, device, autocast = accelerator.unwrap_model(model), accelerator.device, accelerator.autocast()
    else:
        net, device, autocast = model, next(model.parameters()).device, nullcontext()
    net.to(device)
    was_training = net.training
    net.eval()
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    try:
        with torch.no_grad(), autocast:
            for batch in progress.bar(loader, "evaluating"):
                result = net(**{k: v.to(device) for k, v in batch.items()})
                for n in names:
                    t = getattr(result, n).float()
                    if accelerator is not None:
                        t = accelerator.gather_for_metrics(accelerator.pad_across_processes(t, dim=1))
                    out[n].extend(t.cpu().numpy())
    finally:
        net.train(was_training)
    return {n: [row[:length] for row, length in zip(rows, lengths)] for n, rows in out.items()}


def stratified(strata: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """`cap` indices drawn without replacement so that every stratum keeps its share (largest
    remainders round the shares to whole rows); a float array (a regression score) is cut into
    quintiles first. Sorted, as the rows appear in the file."""
    if strata.dtype.kind == "f":
        edges = np.quantile(strata, [0.2, 0.4, 0.6, 0.8])
        strata = np.searchsorted(edges, strata, side="right")
    values, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    exact = counts * cap / len(strata)
    share = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - share), kind="stable")[: cap - share.sum()]:
        share[i] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(inverse == v), share[v], replace=False) for v in range(len(values))]
    return np.sort(np.concatenate(picked))
