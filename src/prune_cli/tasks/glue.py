"""GLUE: the nine sentence(-pair) classification tasks, plus STS-B regression.

Data comes either from the Hub (`nyu-mll/glue`, one config per task, integer labels already) or
from a local folder in the layout of the original GLUE download (`train.tsv`, `dev.tsv`, MNLI's
`dev_matched.tsv` / `dev_mismatched.tsv`), whose column names, label spellings and even header
rows differ from task to task (CoLA has no header; MRPC's starts with a byte-order mark; RTE and
MNLI write labels as words). Each task's YAML says where its text and label live in both sources,
so this module needs no per-task branches.

Metrics are the GLUE ones (Matthews correlation for CoLA, Pearson/Spearman for STS-B, F1 and
accuracy for MRPC/QQP, accuracy elsewhere), computed with scikit-learn and scipy because
`evaluate.load("glue")` fetches a script from the Hub and fails offline. Test splits have no
labels, so the dev split(s) are what `evaluate()` scores.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Iterator
from contextlib import closing
from numbers import Integral
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from prune_cli import progress
from prune_cli.errors import ConfigError, DataError
from prune_cli.tasks.base import Splits, Task, hub_dataset_available, read_text

log = logging.getLogger(__name__)

# Rows validate() reads from each file: enough to catch a wrong folder, cheap on SST-2's 67k rows.
PEEK_ROWS = 20


# ---------------------------------------------------------------------- metrics
def accuracy(preds, labels) -> float:
    return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def f1(preds, labels) -> float:
    """Binary F1 of the positive class (1 = paraphrase / duplicate), as GLUE reports it."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, average="binary", zero_division=0.0))


def matthews_correlation(preds, labels) -> float:
    """CoLA's metric; sklearn defines it as 0.0 when either side is constant."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, preds))


def pearson(preds, labels) -> float:
    return _correlation("pearsonr", preds, labels)


def spearmanr(preds, labels) -> float:
    return _correlation("spearmanr", preds, labels)


def _correlation(name: str, preds, labels) -> float:
    """A correlation, 0.0 where it is undefined (a constant side): like sklearn's MCC, and unlike
    NaN it keeps metrics.json valid JSON and comparisons ("is the pruned model worse?") meaningful."""
    import scipy.stats

    preds, labels = np.asarray(preds, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    if len(preds) < 2 or np.ptp(preds) == 0 or np.ptp(labels) == 0:
        return 0.0
    return float(getattr(scipy.stats, name)(preds, labels)[0])


METRICS = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearmanr": spearmanr,
}


# ---------------------------------------------------------------------- local TSV files
def read_tsv(path: Path, given: object = None) -> Iterator[list[str]]:
    """Rows of a GLUE TSV file, header included (row i of the iterator is line i + 1 of the file).

    QUOTE_NONE because quotes are part of the text (MRPC: `"The foodservice pie ...`): the default
    dialect would swallow tab-separated fields into one quoted cell. `read_text` drops the
    byte-order mark that MRPC's header starts with and names the line of any non-UTF-8 byte.
    """
    yield from csv.reader(io.StringIO(read_text(path, given=given), newline=""), delimiter="\t",
                          quoting=csv.QUOTE_NONE)


class GlueTask(Task):
    greater_is_better = True

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.name = cfg.name
        self.primary_metric = cfg.primary_metric
        self._parsed: dict = {}  # (split, rows read) -> (text columns, labels)

    @property
    def sentence_pair(self) -> bool:
        return len(self.cfg.hub_text_columns) == 2

    @property
    def is_regression(self) -> bool:
        return not self.cfg.get("labels")

    # 1 ------------------------------------------------------------------ validation
    def validate(self) -> None:
        cfg = self.cfg
        unknown = [m for m in cfg.metrics if m not in METRICS]
        if unknown:
            raise ConfigError("task.metrics", list(cfg.metrics), f"names from {', '.join(METRICS)}")
        suffixes = [split.get("suffix", "") for split in (cfg.get("eval_splits") or {}).values()] or [""]
        allowed = [m + suffix for suffix in suffixes for m in cfg.metrics]  # MNLI: accuracy_mm = mismatched
        if cfg.primary_metric not in allowed:
            raise ConfigError("task.primary_metric", cfg.primary_metric, f"one of {', '.join(allowed)} (task.metrics "
                              "on each evaluation split)")
        n_text = {len(cfg.hub_text_columns), len(cfg.local.text_columns)}
        if len(n_text) != 1 or n_text - {1, 2}:
            raise ConfigError("task.local.text_columns", list(cfg.local.text_columns),
                              f"1 or 2 columns, as many as task.hub_text_columns ({list(cfg.hub_text_columns)})")
        v = cfg.get("max_length")
        if not isinstance(v, Integral) or isinstance(v, bool) or v < 1:
            raise ConfigError("task.max_length", v, "a positive integer (tokens per example)")
        if cfg.get("data_dir"):
            self._validate_local()
        else:
            self._validate_hub()

    def _validate_local(self) -> None:
        folder = self._data_dir()
        given = str(self.cfg.data_dir)
        if not folder.is_dir():
            raise ConfigError("task.data_dir", given, f"an existing folder in the GLUE TSV layout ({self.name}: {', '.join(self._files().values())})")
        for name in self._files().values():
            path = folder / name
            if not path.is_file():
                raise ConfigError("task.data_dir", given, f"a GLUE {self.name} folder holding {name}")
            with closing(read_tsv(path, given)) as rows:
                header = next(rows, None) if self.cfg.local.header else None
                peek = [row for _, row in zip(range(PEEK_ROWS), rows)]
            if not peek:
                raise ConfigError("task.data_dir", given, f"a non-empty {name}")
            try:
                index = self._column_index(header)
                # a few truncated rows are tolerated (the loader skips them, see _local_examples);
                # a file where no row has the columns is the wrong file
                complete = [row for row in peek if len(row) > max(index)] or peek[:1]
                for row in complete:
                    self._example(row, index)
            except ValueError as err:
                raise ConfigError("task.data_dir", given, f"a GLUE {self.name} folder: {name} {err}") from None
        for split in self._files():  # every row (labels, scores), named by line, before any model loads
            self._local_examples(split, self._first(split))

    def _validate_hub(self) -> None:
        if not hub_dataset_available(self.cfg):
            raise ConfigError(
                "task.data_dir", None,
                f"a local GLUE {self.name} folder (task.data_dir=<folder with {', '.join(self._files().values())}>), "
                f"or {self.cfg.hub}/{self.cfg.hub_config} in the Hugging Face cache (the Hub is offline here)",
            )

    # 2 ------------------------------------------------------------------ model
    def auto_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def model_kwargs(self) -> dict:
        if self.is_regression:
            return {"num_labels": 1, "problem_type": "regression"}
        labels = list(self.cfg.labels)
        return {
            "num_labels": len(labels), "problem_type": "single_label_classification",
            "id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)},
        }

    # 3 ------------------------------------------------------------------ data
    def _data_dir(self) -> Path:
        from hydra.utils import to_absolute_path

        return Path(to_absolute_path(str(self.cfg.data_dir)))

    def _files(self) -> dict[str, str]:
        """Local file name of the train split and of every eval split, keyed by split name."""
        files = {"train": self.cfg.local.train}
        files.update({split: spec.file for split, spec in self.cfg.eval_splits.items()})
        return files

    def _column_index(self, header: list[str] | None) -> list[int]:
        """Positions of the text column(s) then the label column in a row, from names or indices."""
        cols = self.cfg.local
        wanted = [*cols.text_columns, cols.label_column]
        if header is None:
            if not all(isinstance(c, Integral) for c in wanted):
                raise ValueError(f"has no header row, so task.local columns must be indices (got {wanted})")
            return [int(c) for c in wanted]
        names = [h.strip() for h in header]
        missing = [c for c in wanted if str(c) not in names]
        if missing:
            raise ValueError(f"needs columns {', '.join(map(str, wanted))} (missing {', '.join(map(str, missing))}; has {', '.join(names)})")
        return [names.index(str(c)) for c in wanted]

    def _example(self, row: list[str], index: list[int]) -> tuple[list[str], float | int]:
        """(texts, label id or score) of one local row; ValueError names what is wrong."""
        if len(row) <= max(index):
            raise ValueError(f"needs at least {max(index) + 1} tab-separated fields per row (a row has {len(row)})")
        texts, raw = [row[i] for i in index[:-1]], row[index[-1]].strip()
        if self.is_regression:
            try:
                score = float(raw)
            except ValueError:
                raise ValueError(f"has label {raw!r} in column {self.cfg.local.label_column}: expected a number") from None
            if not math.isfinite(score):
                raise ValueError(f"has label {raw!r} in column {self.cfg.local.label_column}: expected a finite number")
            return texts, score
        values = [str(v) for v in (self.cfg.local.get("labels") or self.cfg.labels)]
        if raw not in values:
            raise ValueError(f"has label {raw!r} in column {self.cfg.local.label_column}: expected one of {', '.join(values)}")
        return texts, values.index(raw)

    def _local_examples(self, split: str, cap: int | None) -> tuple[list[list[str]], list]:
        """Reads only as far as `cap`: a few dozen SST-2 rows should not cost a 67k-row parse.
        Parsed once per split (validation reads every file before any model loads)."""
        if (split, cap) in self._parsed:
            return self._parsed[split, cap]
        path = self._data_dir() / self._files()[split]
        texts, labels, skipped = [], [], 0
        given = str(self.cfg.data_dir)
        with closing(read_tsv(path, given)) as rows:
            header = self.cfg.local.header
            index = self._column_index(next(rows, None) if header else None)
            for line, row in enumerate(rows, 2 if header else 1):
                if cap and len(labels) >= cap:
                    break
                if len(row) <= max(index):  # QQP's train.tsv has a few truncated rows: skip, as GLUE's own loaders do
                    skipped += 1
                    continue
                try:
                    t, y = self._example(row, index)
                except ValueError as err:
                    raise DataError("task.data_dir", given, path, f"line {line}", f"a GLUE {self.name} row: it {err}") from None
                texts.append(t)
                labels.append(y)
        if skipped:
            log.warning("%s: skipped %d rows with too few fields", path, skipped)
        if not labels:
            raise ConfigError("task.data_dir", str(self.cfg.data_dir), f"a GLUE {self.name} folder with examples in {path.name}")
        self._parsed[split, cap] = [list(col) for col in zip(*texts)], labels
        return self._parsed[split, cap]

    def _first(self, split: str) -> int | None:
        """How many leading rows of a split are read (None = all): the first N when they are the
        ones kept (evaluation, or `task.subsample=first`); a random draw needs every row."""
        return self.cap(split) if split != "train" or self.cfg.get("subsample", "random") == "first" else None

    def _hub_examples(self, split: str) -> tuple[list[list[str]], list]:
        import datasets

        ds = datasets.load_dataset(str(self.cfg.hub), self.cfg.hub_config, split=split)
        return [list(ds[c]) for c in self.cfg.hub_text_columns], list(ds["label"])

    def examples(self, split: str) -> tuple[list[list[str]], list]:
        """(text columns, labels) of a split, capped by max_*_samples (`Task.take` chooses the rows)."""
        first = self._first(split)
        if self.cfg.get("data_dir"):  # the first N: no need to parse a 364k-row file to its end
            columns, labels = self._local_examples(split, first)
        else:
            columns, labels = self._hub_examples(split)
        idx = self.take(split, len(labels), strata=labels, whole=first is None)
        if idx is None:
            return columns, labels
        return [[col[i] for i in idx] for col in columns], [labels[i] for i in idx]

    def _encode(self, tokenizer, split: str):
        import datasets

        columns, labels = self.examples(split)
        # one text column: single sentences; two: pairs, truncated longest-first to max_length
        enc = tokenizer(*columns, truncation=True, max_length=int(self.cfg.max_length))
        data = dict(enc)
        data["labels"] = labels
        features = None
        if self.is_regression:  # float32 targets: MSELoss wants the logits' dtype
            features = datasets.Features({k: datasets.List(datasets.Value("int64")) for k in enc})
            features["labels"] = datasets.Value("float32")
        return datasets.Dataset.from_dict(data, features=features)

    def splits(self, tokenizer) -> Splits:
        eval_sets = {split: self._encode(tokenizer, split) for split in self.cfg.eval_splits}
        return Splits(train=self._encode(tokenizer, "train"), eval=eval_sets)

    # 5 ------------------------------------------------------------------ evaluation
    def predict(self, model, tokenizer, dataset, accelerator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) over a whole split, in order, gathered across processes, on the CPU."""
        from torch.utils.data import DataLoader

        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=self.collate_fn(tokenizer))
        loader = accelerator.prepare_data_loader(loader)
        net = accelerator.unwrap_model(model)
        net.to(accelerator.device)
        was_training = net.training
        net.eval()
        logits, labels = [], []
        try:
            with torch.no_grad(), accelerator.autocast():
                for batch in progress.bar(loader, "evaluating"):
                    batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                    target = batch.pop("labels")
                    out = net(**batch).logits.float()
                    out, target = accelerator.gather_for_metrics((out, target))
                    logits.append(out.cpu())
                    labels.append(target.cpu())
        finally:
            net.train(was_training)
        return torch.cat(logits), torch.cat(labels)

    def evaluate(self, model, tokenizer, splits: Splits, accelerator, batch_size: int) -> dict[str, float]:
        """Task metrics, eval loss and example count per eval split; keys of extra splits get the
        split's suffix (MNLI: `accuracy` matched, `accuracy_mm` mismatched)."""
        results: dict[str, float] = {}
        self.predictions = {}
        for split, spec in self.cfg.eval_splits.items():
            suffix = spec.get("suffix") or ""
            metrics, preds, labels = self._score(model, tokenizer, splits.eval[split], accelerator, batch_size)
            results.update({k + suffix: v for k, v in metrics.items()})
            self.predictions[split] = {"prediction": preds.tolist(), "label": labels.tolist()}
        return results

    def primary_split(self) -> tuple[str | None, str]:
        splits = sorted((self.cfg.get("eval_splits") or {}).items(), key=lambda kv: -len(kv[1].get("suffix") or ""))
        for split, spec in splits:  # the longest suffix first: `accuracy_mm` is not `accuracy` + "_mm" of ""
            suffix = spec.get("suffix") or ""
            base = self.primary_metric[: len(self.primary_metric) - len(suffix)]
            if self.primary_metric.endswith(suffix) and base in self.cfg.metrics:
                return split, base
        return None, self.primary_metric

    def evaluate_on(self, model, tokenizer, dataset, accelerator, batch_size: int) -> dict[str, float]:
        """The metrics on any tokenised labelled rows (e.g. a validation split carved from the
        training data); `predictions` are left alone."""
        return self._score(model, tokenizer, dataset, accelerator, batch_size)[0]

    def _score(self, model, tokenizer, dataset, accelerator, batch_size: int):
        logits, labels = self.predict(model, tokenizer, dataset, accelerator, batch_size)
        if self.is_regression:
            preds = logits[:, 0]
            loss = torch.nn.functional.mse_loss(preds, labels.float())
        else:
            preds = logits.argmax(-1)
            loss = torch.nn.functional.cross_entropy(logits, labels.long())
        from prune_cli import metrics as local

        glue = local.load("glue", "regression" if self.is_regression else "default")
        metrics = glue.compute(predictions=preds.numpy(), references=labels.numpy(), metrics=list(self.cfg.metrics))
        metrics.update({"loss": float(loss), "samples": len(labels)})
        return metrics, preds, labels

    def metric_on(self, predictions, labels) -> dict[str, float]:
        import numpy as np

        return {name: METRICS[name](np.asarray(predictions), np.asarray(labels)) for name in self.cfg.metrics}
