"""Language-model perplexity on WikiText-2 (raw), the way the LLM pruning papers report it.

SparseGPT (Frantar & Alistarh 2023, github.com/IST-DASLab/sparsegpt `datautils.get_wikitext2`),
Wanda (Sun et al. 2024, github.com/locuslab/wanda `lib/data.py`, `lib/eval.py`) and LLM-Pruner (Ma
et al. 2023, github.com/horseee/LLM-Pruner `LLMPruner/datasets/ppl_dataset.py`,
`LLMPruner/evaluator/ppl.py`) all compute it one way, and the numbers only compare when every step
is the same:

* the test split is the rows of the Hugging Face `wikitext` / `wikitext-2-raw-v1` loader, joined
  with "\\n\\n" into ONE string, tokenised once (the tokenizer's own special tokens, i.e. one BOS
  at the very start for Llama). That loader yields each line of `wiki.test.raw` WITH its "\\n",
  and a blank line (a single space in the file) as "" (`wikitext_rows` rebuilds those rows from
  the local file, so the local and the Hub text are the same string);
* the ids are cut into non-overlapping windows of `max_length` tokens (`model.seqlen`: 2048 for
  OPT / LLaMA-1 in SparseGPT and Wanda); the tail shorter than a window is dropped;
* every window is scored on its own (no context carried over), each token after the first
  predicted from the ones before it in its window; perplexity = exp(mean token NLL over all
  predicted tokens). Every window predicts `max_length - 1` tokens, so this equals SparseGPT's
  exp(mean of the per-window mean losses).

`task.max_eval_samples` is the number of windows scored (the first N: runs pair window by
window); the per-window NLL sums and token counts are kept as predictions, so a bootstrap can
resample windows (`metric_on`).

Training / calibration text (what pruning scorers and fine-tuning read) is the train split, joined
with " " as SparseGPT and Wanda join it for their calibration samples, cut into windows of the
same length; `task.max_train_samples` windows are drawn as `Task.take` draws rows. SparseGPT and
Wanda draw 128 windows at random OFFSETS (they may overlap); here the windows are disjoint and
the draw is the usual seeded row draw, so every run can say exactly which text it saw. The full
`wiki.train.raw` is not shipped everywhere (it is over 10 MB): a local folder without it falls
back to `wiki.valid.raw`, and metrics.json (`train_rows.text`) says which file was read.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from prune_cli import progress
from prune_cli.errors import ConfigError
from prune_cli.tasks.base import Splits, Task, hub_dataset_available, read_text

log = logging.getLogger(__name__)

#: the Hub copy of WikiText-2 raw (parquet of the original loader's rows)
WIKITEXT_HUB = {"hub": "Salesforce/wikitext", "hub_config": "wikitext-2-raw-v1", "hub_revision": None}
WIKITEXT_FILES = {"train": "wiki.train.raw", "validation": "wiki.valid.raw", "test": "wiki.test.raw"}
#: how each split's rows are joined before tokenising (SparseGPT / Wanda)
EVAL_JOIN, TRAIN_JOIN = "\n\n", " "


# ---------------------------------------------------------------------- text and windows
def wikitext_rows(text: str) -> list[str]:
    """The rows the Hugging Face `wikitext` loader yields for a raw file: every line with its
    newline, a line of only whitespace as "". Lines end at "\\n" (and "\\r", "\\r\\n", as Python's
    text mode reads them), never at the other characters `str.splitlines` splits on."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    rows = [line + "\n" for line in lines[:-1]]
    if lines[-1]:  # a last line without a newline
        rows.append(lines[-1])
    return [row if row.strip() else "" for row in rows]


def encode_text(tokenizer, text: str) -> list[int]:
    """The whole text as ONE sequence of ids, with the tokenizer's own special tokens, as the
    papers call `tokenizer(text)`; no warning about its length (it is cut into windows after)."""
    return list(tokenizer(text, verbose=False)["input_ids"])


def windows(ids: list[int], length: int) -> list[list[int]]:
    """Non-overlapping windows of `length` ids from the start; the tail shorter than a window is
    dropped (SparseGPT: nsamples = numel // seqlen)."""
    return [ids[i * length : (i + 1) * length] for i in range(len(ids) // length)]


def perplexity_metrics(nll_sums, tokens) -> dict[str, float]:
    """exp(total NLL / total predicted tokens), with the mean NLL and the counts."""
    nll_sums, tokens = np.asarray(nll_sums, dtype=np.float64), np.asarray(tokens, dtype=np.float64)
    total, count = float(nll_sums.sum()), float(tokens.sum())
    nll = total / count if count else float("nan")
    return {"perplexity": math.exp(nll) if math.isfinite(nll) else float("nan"), "nll": nll,
            "tokens": int(count), "windows": len(tokens)}


# ---------------------------------------------------------------------- running a model
class Runner:
    """The model on its device (accelerate's when given), in eval mode inside `with`; `shard`
    gives this process its share of a list, `gather` every process's results back in order."""

    def __init__(self, model, accelerator):
        self.accelerator = accelerator
        if accelerator is not None:
            self.net, self.device = accelerator.unwrap_model(model), accelerator.device
            self.rank, self.world = accelerator.process_index, accelerator.num_processes
        else:
            self.net, self.device, self.rank, self.world = model, next(model.parameters()).device, 0, 1

    def __enter__(self):
        self.net.to(self.device)
        self._was_training = self.net.training
        self.net.eval()
        self._autocast = self.accelerator.autocast() if self.accelerator is not None else nullcontext()
        self._autocast.__enter__()
        return self

    def __exit__(self, *exc):
        self._autocast.__exit__(*exc)
        self.net.train(self._was_training)
        return False

    def shard(self, items: list):
        """This process's share of the batches (counted by a bar while the run shows them)."""
        return progress.bar(items[self.rank :: self.world], "evaluating")

    def gather(self, results: list) -> list:
        if self.world == 1:
            return results
        from accelerate.utils import gather_object

        return gather_object(results)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, last: int | None = None) -> torch.Tensor:
        """The causal LM's logits for right-padded ids: no attention mask, as lm-evaluation-
        harness calls it (a causal model never looks right, so padding on the right changes no
        real position). `last=K`: only the last K positions are needed; a model whose forward
        takes transformers' `logits_to_keep` then skips the vocabulary projection of the others
        (a quarter of the time of a 200-token forward of SmolLM2-135M, 49k vocabulary, on one CPU
        thread); the result is always the last K positions."""
        kw = {}
        if last is not None and self._keeps_logits:
            kw["logits_to_keep"] = int(last)
        out = self.net(input_ids=input_ids.to(self.device), **kw).logits
        return out if last is None else out[:, -int(last):]

    @functools.cached_property
    def _keeps_logits(self) -> bool:
        return "logits_to_keep" in inspect.signature(self.net.forward).parameters


# The float32 logits one forward of window_nlls may hold. A window's logits are its length times the
# vocabulary: 2048 x 49,152 x 4 bytes = 403 MB for SmolLM2, so trainer.eval_batch_size's 64 windows
# asked for 25.8 GB and the full WikiText-2 test set could not be scored on a 24 GB machine.
LOGITS_BYTES = 2 * 1024**3


def windows_per_forward(model, length: int, batch_size: int, logits_bytes: int = LOGITS_BYTES) -> int:
    """At most `batch_size` windows of `length` tokens, fewer when their float32 logits would pass
    `logits_bytes` (never fewer than one: a longer window is the user's choice)."""
    head = model.get_output_embeddings()
    vocab = head.weight.shape[0] if head is not None else int(model.config.vocab_size)
    return max(1, min(batch_size, logits_bytes // (length * vocab * 4)))


def window_nlls(model, windows_ids: list[list[int]], accelerator, batch_size: int,
                logits_bytes: int = LOGITS_BYTES) -> tuple[list[float], list[int]]:
    """(summed NLL, predicted tokens) of every window, each scored on its own."""
    out = []
    with Runner(model, accelerator) as run:
        if windows_ids:
            batch_size = windows_per_forward(run.net, len(windows_ids[0]), batch_size, logits_bytes)
        batches = [list(range(i, min(i + batch_size, len(windows_ids))))
                   for i in range(0, len(windows_ids), batch_size)]
        for batch in run.shard(batches):
            ids = torch.tensor([windows_ids[i] for i in batch], dtype=torch.long)
            logits = run.logits(ids)
            target = ids[:, 1:].to(logits.device)
            for row, i in enumerate(batch):  # one window's float32 log-softmax at a time (vocabularies are large)
                nll = torch.nn.functional.cross_entropy(logits[row, :-1].float(), target[row], reduction="none")
                out.append((i, float(nll.double().sum()), int(target.shape[1])))
        out = sorted(run.gather(out))
    return [o[1] for o in out], [o[2] for o in out]


def lm_collate(batch: list[dict]) -> dict[str, torch.Tensor]:
    """Windows of equal length: no padding; labels = the ids (the model shifts them), so
    `model(**batch).loss` is the mean next-token NLL of the batch."""
    ids = torch.tensor([row["input_ids"] for row in batch], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


@functools.cache
def load_metric(name: str):
    """A local evaluate module of prune_cli/metrics, loaded by folder once per process and kept in
    memory (`prune_cli.metrics.load` does the same for the encoder tasks' metrics)."""
    import evaluate

    from prune_cli import metrics

    return evaluate.load(str(Path(metrics.__file__).resolve().parent / name), keep_in_memory=True)


# ---------------------------------------------------------------------- WikiText-2 text sources
class WikiText:
    """The rows of WikiText-2 splits, from a local folder of the original release files
    (`folder`) or else from the Hub (`hub`: hub, hub_config, hub_revision). `key` names the
    setting a refusal points at, `why` what the text is for (said in that refusal)."""

    def __init__(self, folder: str | None, hub: dict, key: str, why: str = ""):
        self.folder, self.hub, self.key, self.why = folder, hub, key, why
        self._rows: dict[str, list[str]] = {}

    def path(self) -> Path:
        from hydra.utils import to_absolute_path

        return Path(to_absolute_path(str(self.folder)))

    def local_file(self, split: str) -> Path:
        return self.path() / WIKITEXT_FILES[split]

    def has(self, split: str) -> bool:
        return self.local_file(split).is_file() if self.folder else True

    def check(self, splits: tuple[str, ...]) -> None:
        """The folder and the files of `splits` exist and are UTF-8 text with some text in them
        (read once, kept); offline without a local folder: the Hub copy is in the cache."""
        files = ", ".join(WIKITEXT_FILES[s] + (" or wiki.valid.raw" if s == "train" else "") for s in splits)
        if not self.folder:
            if not hub_dataset_available(OmegaConf.create(self.hub)):
                raise ConfigError(self.key, None, f"a local WikiText-2 raw folder ({files}){self.why}, or data_root=, "
                                  f"or {self.hub['hub']}/{self.hub['hub_config']} in the Hugging Face cache (the Hub "
                                  "is offline here)")
            return
        if not self.path().is_dir():
            raise ConfigError(self.key, str(self.folder), f"an existing folder holding WikiText-2 raw ({files})")
        for split in splits:
            if not self.local_file(split).is_file():
                # the training text falls back to validation: neither file is there
                name = f"{WIKITEXT_FILES['train']} or {WIKITEXT_FILES[split]}" if split == self.train_split() \
                    else WIKITEXT_FILES[split]
                raise ConfigError(self.key, str(self.folder), f"a WikiText-2 raw folder holding {name}{self.why}")
            if not any(self.rows(split)):
                raise ConfigError(self.key, str(self.folder), f"a non-empty {WIKITEXT_FILES[split]}")

    def rows(self, split: str) -> list[str]:
        if split not in self._rows:
            if self.folder:
                self._rows[split] = wikitext_rows(read_text(self.local_file(split), self.key, self.folder))
            else:
                import datasets

                ds = datasets.load_dataset(self.hub["hub"], self.hub.get("hub_config"), split=split,
                                           revision=self.hub.get("hub_revision"))
                self._rows[split] = list(ds["text"])
        return self._rows[split]

    def train_split(self) -> str:
        """train when there is one (the Hub, or a local folder with wiki.train.raw), else validation."""
        return "train" if self.has("train") else "validation"

    def describe(self, split: str) -> str:
        return WIKITEXT_FILES[split] if self.folder else f"{self.hub['hub']}/{self.hub['hub_config']}:{split}"


def calibration_windows(task: Task, text: WikiText, tokenizer, length: int):
    """The training split of a task that trains on WikiText-2: windows of `length` tokens of its
    train text (or validation text, without a train file), `max_train_samples` of them drawn by
    `Task.take`; `task.subset` records the draw and which text it came from."""
    import datasets

    split = text.train_split()
    tokens = encode_text(tokenizer, TRAIN_JOIN.join(text.rows(split)))
    ids = windows(tokens, length)
    if not ids:
        raise ConfigError("task.max_length", length, f"at most the {len(tokens)} tokens of {text.describe(split)}")
    idx = task.take("train", len(ids))
    if idx is not None:
        ids = [ids[i] for i in idx]
    record = task.subset or {"split": "train", "subsample": None, "rows": len(ids), "of": len(ids)}
    task.subset = {**record, "text": text.describe(split), "unit": f"windows of {length} tokens"}
    if split != "train":
        log.info("no %s: training windows come from %s", WIKITEXT_FILES["train"], text.describe(split))
    return datasets.Dataset.from_dict({"input_ids": ids})


# ---------------------------------------------------------------------- the task
class PerplexityTask(Task):
    """WikiText-2 perplexity (family `lm`): see the module docstring."""

    primary_metric = "perplexity"
    greater_is_better = False

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.name = str(cfg.name)
        hub = {k: cfg.get(k, WIKITEXT_HUB[k]) for k in WIKITEXT_HUB}
        self.text = WikiText(cfg.get("data_dir"), hub, "task.data_dir")

    @property
    def eval_split(self) -> str:
        return str(self.cfg.get("eval_split", "test"))

    def validate(self) -> None:
        cfg = self.cfg
        if self.eval_split not in ("test", "validation"):
            raise ConfigError("task.eval_split", self.eval_split, "test or validation")
        self.text.check((self.eval_split,))  # the folder and the evaluation file first
        train = self.text.train_split()
        if train == self.eval_split:
            raise ConfigError("task.data_dir", str(cfg.data_dir), f"a folder holding {WIKITEXT_FILES['train']} "
                              f"when task.eval_split={self.eval_split} (the training text would be the evaluation text)")
        self.text.check((train,))

    def auto_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    def splits(self, tokenizer) -> Splits:
        import datasets

        length = int(self.cfg.max_length)
        tokens = encode_text(tokenizer, EVAL_JOIN.join(self.text.rows(self.eval_split)))
        ids = windows(tokens, length)
        if not ids:
            raise ConfigError("task.max_length", length,
                              f"at most the {len(tokens)} tokens of {self.text.describe(self.eval_split)}")
        idx = self.take(self.eval_split, len(ids))
        if idx is not None:
            ids = [ids[i] for i in idx]
        evaluation = datasets.Dataset.from_dict({"input_ids": ids})
        train = calibration_windows(self, self.text, tokenizer, length)
        return Splits(train=train, eval={self.eval_split: evaluation})

    def collate_fn(self, tokenizer):
        return lm_collate

    def evaluate(self, model, tokenizer, splits: Splits, accelerator, batch_size: int) -> dict[str, float]:
        data = splits.eval[self.eval_split]
        nll, tokens = window_nlls(model, list(data["input_ids"]), accelerator, batch_size)
        metrics = load_metric("perplexity").compute(predictions=nll, references=tokens)
        self.predictions = {self.eval_split: {"prediction": nll, "label": tokens}}
        return metrics

    def metric_on(self, predictions, labels) -> dict[str, float]:
        return perplexity_metrics(predictions, labels)
