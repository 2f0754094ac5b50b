"""Named-entity recognition on CoNLL-2003 (token classification).

Data comes from the CoNLL files themselves (one token a line: word, POS, chunk, NER tag; a blank
line ends a sentence; `-DOCSTART-` lines separate documents; the tag is the LAST column, so
two-column copies read too) or from the Hub (`eriktks/conll2003`). The label list is fixed in the
task's YAML, in the Hub's order, so label ids never depend on which tags a subset happens to hold.

A word may become several sub-words: only its first sub-word carries the label (the others get
-100, which the loss ignores), and the prediction for a word is read from its first sub-word.
Scoring is entity-level precision/recall/F1 with seqeval's default (conlleval) semantics, per entity
type too, plus word accuracy, all as fractions (0-1). A word cut off by `max_length` is predicted
"O" rather than dropped, so truncation can only lower the score, never hide gold entities.
"""

from __future__ import annotations

import functools
from pathlib import Path

from omegaconf import DictConfig

from prune_cli.errors import ConfigError, DataError
from prune_cli.tasks.base import (
    Splits,
    Task,
    batched_outputs,
    check_hub_splits,
    hub_dataset_available,
    read_text,
)

SPLITS = ("train", "validation", "test")
EVAL_SPLITS = ("validation", "test")
IGNORE = -100


def read_conll(path: Path) -> list[dict]:
    """Sentences of a CoNLL file as {"tokens": [...], "tags": [...]}; ConfigError if malformed."""
    sentences, tokens, tags = [], [], []
    lines = read_text(path).split("\n")
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if tokens:
                sentences.append({"tokens": tokens, "tags": tags})
                tokens, tags = [], []
            continue
        if len(fields) < 2:
            raise DataError("task.data_dir", str(path), path, f"line {number}",
                            f"a CoNLL token line 'word ... tag' (it reads {line!r})")
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        sentences.append({"tokens": tokens, "tags": tags})
    return sentences


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Label of each sub-word: the word's label on its first sub-word, -100 elsewhere (special
    tokens and continuation pieces), so each word counts once in the loss."""
    out, previous = [], None
    for w in word_ids:
        out.append(word_labels[w] if w is not None and w != previous else IGNORE)
        previous = w
    return out


def entity_metrics(
    gold: list[list[str]], predicted: list[list[str]], types: list[str] = ()
) -> dict[str, float]:
    """seqeval micro precision/recall/F1 over entities, F1 per entity type (`f1_PER`, ...) and word
    accuracy. Every type in `types` gets a key (0.0 when neither gold nor prediction has one), so
    runs log the same keys whatever subset they score."""
    from seqeval.metrics import accuracy_score, classification_report

    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    micro = report.get("micro avg", {})
    out = {
        "precision": float(micro.get("precision", 0.0)),
        "recall": float(micro.get("recall", 0.0)),
        "f1": float(micro.get("f1-score", 0.0)),
        "accuracy": float(accuracy_score(gold, predicted)),
    }
    out.update({f"f1_{t}": 0.0 for t in types})
    for name, row in report.items():
        if not name.endswith(" avg"):
            out[f"f1_{name}"] = float(row["f1-score"])
    return out


@functools.lru_cache(maxsize=1 << 18)
def sentence_counts(gold: tuple, predicted: tuple, tags: tuple[str, ...] | None = None) -> tuple[int, ...]:
    """(entities right, entities predicted, gold entities, words right, words) of one sentence, its
    tags given as strings or as indices into `tags`. seqeval's entities never cross a sentence, so
    the micro scores of any set of sentences (a bootstrap resample) follow from these sums; cached
    because resamples repeat sentences."""
    from seqeval.metrics.sequence_labeling import get_entities

    if tags is not None:
        gold, predicted = tuple(tags[i] for i in gold), tuple(tags[i] for i in predicted)
    g, p = set(get_entities(list(gold))), set(get_entities(list(predicted)))
    return len(g & p), len(p), len(g), sum(a == b for a, b in zip(gold, predicted)), len(gold)


def micro_entity_metrics(counts) -> dict[str, float]:
    """entity_metrics' precision / recall / F1 / accuracy (no per-type F1) from `sentence_counts`."""
    right, n_pred, n_gold, words_right, words = (sum(c) for c in zip(*counts)) if counts else (0,) * 5
    precision = right / n_pred if n_pred else 0.0
    recall = right / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": words_right / words if words else 0.0}


class ConllTask(Task):
    primary_metric = "f1"
    sentence_pair = False
    greater_is_better = True

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.name = cfg.name
        self.labels = list(cfg.labels)
        self._sentences: dict[str, list[dict]] = {}

    # 1 ------------------------------------------------------------------ validation
    def validate(self) -> None:
        cfg = self.cfg
        if not self.labels or len(set(self.labels)) != len(self.labels) or "O" not in self.labels:
            raise ConfigError("task.labels", list(self.labels), "a list of distinct IOB tags including O")
        if cfg.get("eval_split") not in EVAL_SPLITS:
            raise ConfigError("task.eval_split", cfg.get("eval_split"), f"one of {', '.join(EVAL_SPLITS)}")
        if not _is_int(cfg.get("max_length")) or cfg.max_length < 2:
            raise ConfigError(
                "task.max_length", cfg.get("max_length"), "an integer >= 2 (sub-word tokens per sentence)"
            )
        if cfg.get("data_dir"):
            self._validate_local()
        elif cfg.get("hub"):
            self._validate_hub()
        else:
            raise ConfigError(
                "task.data_dir",
                None,
                "a folder of CoNLL files (train.txt, valid.txt, test.txt), or task.hub=<data set id>",
            )

    def _data_dir(self) -> Path:
        from hydra.utils import to_absolute_path

        return Path(to_absolute_path(str(self.cfg.data_dir)))

    def _validate_local(self) -> None:
        folder = self._data_dir()
        if not folder.is_dir():
            raise ConfigError("task.data_dir", str(self.cfg.data_dir), "an existing folder")
        names = self.cfg.get("local_files") or {}
        known = set(self.labels)
        for split in ("train", self.cfg.eval_split):
            name = names.get(split)
            if not name or not (folder / name).is_file():
                raise ConfigError(
                    f"task.local_files.{split}",
                    name,
                    f"a file inside {folder} (has: {', '.join(sorted(p.name for p in folder.iterdir()))})",
                )
            sentences = self._read(split)  # parses and caches: malformed files fail here
            if not sentences:
                raise ConfigError(
                    "task.data_dir", str(folder / name), "a CoNLL file with at least one sentence"
                )
            unknown = sorted({t for s in sentences for t in s["tags"]} - known)
            if unknown:
                raise ConfigError(
                    "task.labels",
                    list(self.labels),
                    f"a list holding every tag of {name} (missing {unknown})",
                )

    def _validate_hub(self) -> None:
        check_hub_splits(self.cfg, ("train", self.cfg.eval_split))
        if not hub_dataset_available(self.cfg):
            raise ConfigError(
                "task.hub", str(self.cfg.hub),
                "a data set in the local Hugging Face cache (the Hub is offline here) or task.data_dir=<folder of CoNLL files>",
            )

    # 2 ------------------------------------------------------------------ model
    def auto_class(self):
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def model_kwargs(self) -> dict:
        return {
            "num_labels": len(self.labels),
            "id2label": dict(enumerate(self.labels)),
            "label2id": {label: i for i, label in enumerate(self.labels)},
        }

    def load_model(self, model_cfg: DictConfig):
        """As the base class, but a byte-level BPE tokenizer (RoBERTa, BART, GPT-2) is reloaded with
        add_prefix_space=True: it refuses pre-split words otherwise, since a word's first piece
        differs with and without the space before it."""
        model, tokenizer = super().load_model(model_cfg)
        pre = getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None)
        if "ByteLevel" in repr(pre) and not getattr(tokenizer, "add_prefix_space", False):
            from transformers import AutoTokenizer

            from prune_cli.models import resolve_source

            tokenizer = AutoTokenizer.from_pretrained(resolve_source(model_cfg), add_prefix_space=True)
        return model, tokenizer

    # 3 ------------------------------------------------------------------ data
    def _read(self, split: str) -> list[dict]:
        """All sentences of a split as {"tokens", "tags"} (tags as strings)."""
        if split not in self._sentences:
            if self.cfg.get("data_dir"):
                self._sentences[split] = read_conll(self._data_dir() / self.cfg.local_files[split])
            else:
                self._sentences[split] = self._hub_sentences(split)
        return self._sentences[split]

    def _hub_sentences(self, split: str) -> list[dict]:
        import datasets

        ds = datasets.load_dataset(
            str(self.cfg.hub),
            self.cfg.get("hub_config"),
            split=self.cfg.hub_splits[split],
            revision=self.cfg.get("hub_revision"),
        )
        column = self.cfg.get("hub_tag_column", "ner_tags")
        feature = ds.features[column].feature
        names = getattr(feature, "names", None)  # ClassLabel ids -> tag strings; plain strings pass through
        return [
            {"tokens": list(r["tokens"]), "tags": [names[t] if names else t for t in r[column]]} for r in ds
        ]

    def sentences(self, split: str) -> list[dict]:
        """Sentences after `max_train_samples` / `max_eval_samples` (`Task.take` chooses them)."""
        rows = self._read(split)
        idx = self.take(split, len(rows))
        return rows if idx is None else [rows[i] for i in idx]

    def encode(self, tokenizer, sentences: list[dict]):
        """(features with aligned `labels`, word_ids per row) for a list of sentences."""
        import datasets

        label2id = {label: i for i, label in enumerate(self.labels)}
        unknown = sorted({t for s in sentences for t in s["tags"]} - set(label2id))
        if unknown:  # Hub data or a split that validate() did not read
            raise ConfigError(
                "task.labels", list(self.labels), f"a list holding every tag of the data (missing {unknown})"
            )
        max_length = min(int(self.cfg.max_length), int(tokenizer.model_max_length))
        enc = tokenizer(
            [s["tokens"] for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length
        )
        word_ids = [enc.word_ids(i) for i in range(len(sentences))]
        labels = [align_labels(w, [label2id[t] for t in s["tags"]]) for w, s in zip(word_ids, sentences)]
        return datasets.Dataset.from_dict({**{k: enc[k] for k in enc}, "labels": labels}), word_ids

    def splits(self, tokenizer) -> Splits:
        split = self.cfg.eval_split
        gold = self.sentences(split)
        features, word_ids = self.encode(tokenizer, gold)
        return Splits(
            train=self.encode(tokenizer, self.sentences("train"))[0],
            eval={split: features},
            eval_raw={split: {"tags": [s["tags"] for s in gold], "word_ids": word_ids}},
        )

    def collate_fn(self, tokenizer):
        """Pads inputs with the pad id and labels with -100."""
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=IGNORE, return_tensors="pt")

    # 5 ------------------------------------------------------------------ evaluation
    def word_predictions(
        self, logits: list, word_ids: list[list[int | None]], lengths: list[int]
    ) -> list[list[str]]:
        """Tag per word from its first sub-word's argmax; words the tokenizer cut off get "O"."""
        out = []
        for row, ids, n in zip(logits, word_ids, lengths):
            tags = ["O"] * n
            previous = None
            for position, w in enumerate(ids):
                if w is not None and w != previous:
                    tags[w] = self.labels[int(row[position].argmax())]
                previous = w
            out.append(tags)
        return out

    def evaluate(self, model, tokenizer, splits: Splits, accelerator, batch_size: int) -> dict[str, float]:

        split = self.cfg.eval_split
        raw = splits.eval_raw[split]
        logits = batched_outputs(
            model, splits.eval[split], self.collate_fn(tokenizer), accelerator, batch_size, ("logits",)
        )["logits"]
        predicted = self.word_predictions(logits, raw["word_ids"], [len(t) for t in raw["tags"]])
        types = sorted({label.split("-", 1)[1] for label in self.labels if "-" in label})
        index = {tag: i for i, tag in enumerate(self.labels)}
        self.predictions = {split: {"prediction": [[index[t] for t in tags] for tags in predicted],
                                    "label": [[index[t] for t in tags] for tags in raw["tags"]]}}
        from prune_cli import metrics

        return metrics.load("seqeval").compute(predictions=predicted, references=raw["tags"], types=types)

    def metric_on(self, predictions, labels) -> dict[str, float]:
        """Micro entity scores of these sentences (predictions.json keeps tag ids per word)."""
        tags = tuple(self.labels)
        return micro_entity_metrics([sentence_counts(tuple(g), tuple(p), tags) for g, p in zip(labels, predictions)])


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
