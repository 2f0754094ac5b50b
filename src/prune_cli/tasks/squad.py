"""Extractive question answering: SQuAD v1.1 and v2.0.

Data comes from JSON files in the official layout (`{"data": [{"title", "paragraphs": [{"context",
"qas": [{"id", "question", "answers", "is_impossible"?}]}]}]}`) or from the Hub (`rajpurkar/squad`,
`rajpurkar/squad_v2`). With no training file (this project's data folder has only dev-v1.1.json),
`split_dev_for_train=<fraction>` trains on a seeded share of the dev ARTICLES and scores the rest:
splitting by article keeps near-duplicate questions about one passage from leaking into the
evaluation set.

Preprocessing is the usual sliding window: a context longer than `max_length` becomes several
features that overlap by `doc_stride` tokens. Training features point at the answer's first and last
token, or at the CLS token when the answer is not inside the window (or there is none, in v2).
Scoring maps start/end logits back to character spans through the offset mapping and follows the
official evaluation scripts (normalised exact match and token F1, the maximum over gold answers,
reported as percentages like those scripts do).
"""

from __future__ import annotations

import functools
import json
import random
import re
import string
from collections import Counter
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from prune_cli.errors import ConfigError
from prune_cli.tasks.base import (
    Splits,
    Task,
    batched_outputs,
    check_hub_splits,
    hub_dataset_available,
    read_text,
)

EVAL = "validation"

# ------------------------------------------------------------------ official metric


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation and the articles a/an/the, collapse whitespace (in the
    official scripts' order, which matters: "the-end" loses its hyphen before articles go)."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str, version_2: bool = False) -> float:
    """Bag-of-tokens F1 of normalised strings.

    The two official scripts differ only when a side normalises to nothing: v1.1 scores 0, v2.0
    scores 1 if both are empty (that is how a correct "no answer" earns its point).
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version_2 and (not pred or not ref):
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_metrics(
    predictions: dict[str, str], examples: list[dict], version_2: bool = False
) -> dict[str, float]:
    """EM and F1 (0-100) over `examples` ({"id", "answers": {"text": [...]}}), best gold answer each.

    v2: an unanswerable question's only gold answer is "" (so only an empty prediction scores), and
    the has-answer / no-answer subsets are reported too. A question missing from `predictions`
    counts as wrong, as in the official scripts.
    """
    em, f1, has_answer = [], [], []
    for ex in examples:
        e, f, answerable = example_scores(predictions.get(ex["id"]), tuple(ex["answers"]["text"]), version_2)
        em.append(e)
        f1.append(f)
        has_answer.append(answerable)
    out = {"exact_match": _percent(em), "f1": _percent(f1)}
    if version_2:
        for name, keep in (("has_ans", True), ("no_ans", False)):
            idx = [i for i, h in enumerate(has_answer) if h == keep]
            if idx:
                out[f"{name}_exact_match"] = _percent([em[i] for i in idx])
                out[f"{name}_f1"] = _percent([f1[i] for i in idx])
    return out


@functools.lru_cache(maxsize=1 << 18)
def example_scores(prediction: str | None, golds: tuple[str, ...], version_2: bool = False) -> tuple[float, float, bool]:
    """(EM, F1, answerable) of one question against its best gold answer; cached because a
    bootstrap resample scores the same questions again."""
    if version_2:
        golds = tuple(g for g in golds if normalize_answer(g)) or ("",)
    if prediction is None:
        return 0.0, 0.0, golds != ("",)
    return (max(exact_match(prediction, g) for g in golds), max(f1_score(prediction, g, version_2) for g in golds),
            golds != ("",))


def _percent(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values) if values else 0.0


# ------------------------------------------------------------------ logits -> answer text


def postprocess(
    examples: list[dict],
    feature_example: list[int],
    offsets: list[list],
    start_logits: list[np.ndarray],
    end_logits: list[np.ndarray],
    *,
    cls_index: list[int] | None = None,
    n_best: int = 20,
    max_answer_length: int = 30,
    version_2: bool = False,
    null_score_diff_threshold: float = 0.0,
) -> dict[str, str]:
    """Best answer text per example id, from the logits of all its features.

    A span is a pair (start, end) among the `n_best` highest start and end logits of one feature,
    both inside the context (offset not None), end >= start, at most `max_answer_length` tokens;
    its score is start + end logit. v2 predicts "" when the null score (CLS start + CLS end, the
    lowest over the example's features) beats the best span by more than the threshold.
    """
    by_example: dict[int, list[int]] = {}
    for f, e in enumerate(feature_example):
        by_example.setdefault(e, []).append(f)
    predictions: dict[str, str] = {}
    for e, ex in enumerate(examples):
        best_score, best_text, null_score = -np.inf, "", np.inf
        for f in by_example.get(e, []):
            start, end, offs = start_logits[f], end_logits[f], offsets[f]
            cls = cls_index[f] if cls_index is not None else 0
            null_score = min(null_score, float(start[cls] + end[cls]))
            starts = np.argsort(start)[::-1][:n_best]
            ends = np.argsort(end)[::-1][:n_best]
            for s in starts:
                if s >= len(offs) or offs[s] is None:
                    continue
                for t in ends:
                    if t >= len(offs) or offs[t] is None or t < s or t - s + 1 > max_answer_length:
                        continue
                    score = float(start[s] + end[t])
                    if score > best_score:
                        best_score, best_text = score, ex["context"][offs[s][0] : offs[t][1]]
        if version_2 and (best_score == -np.inf or null_score - best_score > null_score_diff_threshold):
            best_text = ""
        predictions[ex["id"]] = best_text
    return predictions


# ------------------------------------------------------------------ reading data


def read_squad_json(path: Path) -> list[dict]:
    """Flatten an official SQuAD JSON file into Hub-style rows; ConfigError if it is not one."""
    text = read_text(path)
    try:
        data = json.loads(text)["data"]
        rows = []
        for article in data:
            title = article.get("title", "")
            for para in article["paragraphs"]:
                context = para["context"]
                for qa in para["qas"]:
                    answers = [] if qa.get("is_impossible") else qa["answers"]
                    rows.append(
                        {
                            "id": str(qa["id"]),
                            "title": title,
                            "context": context,
                            "question": qa["question"],
                            "answers": {
                                "text": [a["text"] for a in answers],
                                "answer_start": [int(a["answer_start"]) for a in answers],
                            },
                        }
                    )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            "task.data_dir",
            str(path),
            f"a SQuAD JSON file in the official layout ({type(err).__name__}: {err})",
        ) from None
    if not rows:
        raise ConfigError("task.data_dir", str(path), "a SQuAD JSON file with at least one question")
    check_answers(rows, path)
    return rows


def check_answers(rows: list[dict], source: object, key: str = "task.data_dir") -> None:
    """Every answer's `answer_start` points at its text in the context. Training turns the offset
    into token positions, so an offset that is off (a file whose contexts were re-normalised after
    the offsets were computed) trains on the wrong span, and one past the context makes the
    question unanswerable without a word; the official v1.1 and v2.0 files have no such answer."""
    from prune_cli.errors import DataError

    bad = []
    for number, row in enumerate(rows, 1):
        context = row["context"]
        for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"]):
            if context[start : start + len(text)] != text or start < 0:
                bad.append((number, row, text, start))
    if bad:
        number, row, text, start = bad[0]
        there = row["context"][max(start, 0) : max(start, 0) + len(text)]
        raise DataError(key, str(source), source, f"question {number} (id {row['id']})",
                        f"an answer at its answer_start: {text!r} is not at offset {start} of the context "
                        f"(which reads {there!r} there; {len(bad)} of the file's answers are off)")


def split_by_article(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, eval) rows: whole articles, shuffled with `seed`, go to train until it holds
    `fraction` of the questions. The seed is the task's own (not the run's), so every run of a sweep
    scores the same held-out articles."""
    titles = sorted({r["title"] for r in rows})
    random.Random(seed).shuffle(titles)
    per_title = Counter(r["title"] for r in rows)
    train_titles, taken = set(), 0
    for title in titles:
        if taken >= fraction * len(rows) or len(train_titles) == len(titles) - 1:
            break
        train_titles.add(title)
        taken += per_title[title]
    return [r for r in rows if r["title"] in train_titles], [
        r for r in rows if r["title"] not in train_titles
    ]


# ------------------------------------------------------------------ the task


class SquadTask(Task):
    primary_metric = "f1"
    sentence_pair = True  # question + passage
    greater_is_better = True

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.name = cfg.name
        self._rows: dict[str, list[dict]] = {}

    @property
    def version_2(self) -> bool:
        return bool(self.cfg.get("version_2"))

    # 1 ------------------------------------------------------------------ validation
    def validate(self) -> None:
        cfg = self.cfg
        for key in ("max_length", "doc_stride", "max_answer_length", "n_best"):
            if not _is_int(cfg.get(key)) or cfg.get(key) < 1:
                raise ConfigError(f"task.{key}", cfg.get(key), "a positive integer")
        if cfg.doc_stride >= cfg.max_length:
            raise ConfigError(
                "task.doc_stride", cfg.doc_stride, f"fewer tokens than task.max_length={cfg.max_length}"
            )
        thr = cfg.get("null_score_diff_threshold")
        if not isinstance(thr, Real) or isinstance(thr, bool):
            raise ConfigError(
                "task.null_score_diff_threshold",
                thr,
                "a number (v2: predict no answer when null score - best span score > it)",
            )
        frac = cfg.get("split_dev_for_train")
        if frac is not None and (not isinstance(frac, Real) or isinstance(frac, bool) or not 0 < frac < 1):
            raise ConfigError(
                "task.split_dev_for_train",
                frac,
                "null or a fraction strictly between 0 and 1 "
                "(the share of dev questions, whole articles, used for training)",
            )
        if not _is_int(cfg.get("split_seed", 0)):
            raise ConfigError(
                "task.split_seed", cfg.get("split_seed"), "an integer (seed of the article shuffle)"
            )
        if self._local():
            self._validate_local()
        else:
            self._validate_hub()

    def _local(self) -> bool:
        """Local files when a folder is given, or when there is no Hub name (then the file names are
        paths on their own)."""
        return bool(self.cfg.get("data_dir")) or not self.cfg.get("hub")

    def _file(self, key: str) -> Path | None:
        """`task.train_file` / `task.eval_file` inside `task.data_dir`, or as a path of its own."""
        from hydra.utils import to_absolute_path

        name = self.cfg.get(key)
        if not name:
            return None
        if self.cfg.get("data_dir"):
            return Path(to_absolute_path(str(self.cfg.data_dir))) / str(name)
        return Path(to_absolute_path(str(name)))

    def _validate_local(self) -> None:
        from hydra.utils import to_absolute_path

        if self.cfg.get("data_dir") and not Path(to_absolute_path(str(self.cfg.data_dir))).is_dir():
            raise ConfigError("task.data_dir", str(self.cfg.data_dir), "an existing folder")
        dev = self._file("eval_file")
        if dev is None or not dev.is_file():
            raise ConfigError(
                "task.eval_file",
                self.cfg.get("eval_file"),
                f"an existing SQuAD JSON file{' in task.data_dir' if self.cfg.get('data_dir') else ''}",
            )
        if self.cfg.get("split_dev_for_train") is None:
            train = self._file("train_file")
            if train is None or not train.is_file():
                raise ConfigError(
                    "task.train_file",
                    self.cfg.get("train_file"),
                    f"an existing SQuAD JSON file{' in task.data_dir' if self.cfg.get('data_dir') else ''}, "
                    "or task.split_dev_for_train=<fraction> to train on part of the dev articles",
                )
        for split in ("train", EVAL):  # parses (and caches) the files: malformed JSON fails here
            if not self._raw(split):
                raise ConfigError(
                    "task.split_dev_for_train",
                    self.cfg.get("split_dev_for_train"),
                    f"a fraction that leaves questions in the {split} split",
                )

    def _validate_hub(self) -> None:
        check_hub_splits(self.cfg, ("train", EVAL))
        if not hub_dataset_available(self.cfg):
            raise ConfigError(
                "task.hub", str(self.cfg.hub),
                "a data set in the local Hugging Face cache (the Hub is offline here) or task.data_dir=<folder of SQuAD JSON files>",
            )

    # 2 ------------------------------------------------------------------ model
    def auto_class(self):
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering

    # 3 ------------------------------------------------------------------ data
    def _raw(self, split: str) -> list[dict]:
        """Untokenised rows of "train" or "validation" (before the max_*_samples caps)."""
        if split not in self._rows:
            frac = self.cfg.get("split_dev_for_train")
            if frac is not None:
                dev = self._load(EVAL)
                self._rows["train"], self._rows[EVAL] = split_by_article(
                    dev, float(frac), int(self.cfg.get("split_seed", 0))
                )
            else:
                self._rows[split] = self._load(split)
        return self._rows[split]

    def _load(self, split: str) -> list[dict]:
        if self._local():
            return read_squad_json(self._file("train_file" if split == "train" else "eval_file"))
        import datasets

        ds = datasets.load_dataset(
            str(self.cfg.hub),
            self.cfg.get("hub_config"),
            split=self.cfg.hub_splits[split],
            revision=self.cfg.get("hub_revision"),
        )
        rows = [
            {
                "id": str(r["id"]),
                "title": r.get("title", ""),
                "context": r["context"],
                "question": r["question"],
                "answers": {
                    "text": list(r["answers"]["text"]),
                    "answer_start": list(r["answers"]["answer_start"]),
                },
            }
            for r in ds
        ]
        check_answers(rows, f"{self.cfg.hub}:{self.cfg.hub_splits[split]}", key="task.hub")
        return rows

    def rows(self, split: str) -> list[dict]:
        """Questions of a split after `max_train_samples` / `max_eval_samples` (`Task.take` chooses them)."""
        rows = self._raw(split)
        idx = self.take(split, len(rows))
        return rows if idx is None else [rows[i] for i in idx]

    def _tokenize(self, tokenizer, rows: list[dict]):
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(
                "model",
                type(tokenizer).__name__,
                "a model with a fast tokenizer (SQuAD needs its offset mapping)",
            )
        max_length = min(int(self.cfg.max_length), int(tokenizer.model_max_length))
        return tokenizer(
            [r["question"].lstrip() for r in rows],
            [r["context"] for r in rows],
            truncation="only_second",
            max_length=max_length,
            stride=int(self.cfg.doc_stride),
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )

    def encode_train(self, tokenizer, rows: list[dict]):
        """Features with start/end token positions of the first gold answer (CLS if outside)."""
        import datasets

        enc = self._tokenize(tokenizer, rows)
        starts, ends = [], []
        for f, offs in enumerate(enc["offset_mapping"]):
            cls = _cls_index(enc["input_ids"][f], tokenizer)
            answers = rows[enc["overflow_to_sample_mapping"][f]]["answers"]
            start = end = cls
            if answers["text"]:
                first = answers["answer_start"][0]
                last = first + len(answers["text"][0])
                ctx = [i for i, s in enumerate(enc.sequence_ids(f)) if s == 1]
                if ctx and offs[ctx[0]][0] <= first and offs[ctx[-1]][1] >= last:
                    start = next(i for i in ctx if offs[i][1] > first)
                    end = next(i for i in reversed(ctx) if offs[i][0] < last)
            starts.append(start)
            ends.append(end)
        columns = {k: enc[k] for k in enc if k not in ("offset_mapping", "overflow_to_sample_mapping")}
        return datasets.Dataset.from_dict({**columns, "start_positions": starts, "end_positions": ends})

    def encode_eval(self, tokenizer, rows: list[dict]):
        """(model-input features, scoring info): offsets outside the context become None so that
        post-processing never picks a question token as an answer."""
        import datasets

        enc = self._tokenize(tokenizer, rows)
        offsets, cls_index = [], []
        for f, offs in enumerate(enc["offset_mapping"]):
            seq = enc.sequence_ids(f)
            offsets.append([tuple(o) if s == 1 else None for o, s in zip(offs, seq)])
            cls_index.append(_cls_index(enc["input_ids"][f], tokenizer))
        columns = {k: enc[k] for k in enc if k not in ("offset_mapping", "overflow_to_sample_mapping")}
        raw = {
            "examples": rows,
            "feature_example": list(enc["overflow_to_sample_mapping"]),
            "offsets": offsets,
            "cls_index": cls_index,
        }
        return datasets.Dataset.from_dict(columns), raw

    def splits(self, tokenizer) -> Splits:
        features, raw = self.encode_eval(tokenizer, self.rows(EVAL))
        return Splits(
            train=self.encode_train(tokenizer, self.rows("train")),
            eval={EVAL: features},
            eval_raw={EVAL: raw},
        )

    # 5 ------------------------------------------------------------------ evaluation
    def evaluate(self, model, tokenizer, splits: Splits, accelerator, batch_size: int) -> dict[str, float]:
        raw = splits.eval_raw[EVAL]
        logits = batched_outputs(
            model,
            splits.eval[EVAL],
            self.collate_fn(tokenizer),
            accelerator,
            batch_size,
            ("start_logits", "end_logits"),
        )
        predictions = postprocess(
            raw["examples"],
            raw["feature_example"],
            raw["offsets"],
            logits["start_logits"],
            logits["end_logits"],
            cls_index=raw["cls_index"],
            n_best=int(self.cfg.n_best),
            max_answer_length=int(self.cfg.max_answer_length),
            version_2=self.version_2,
            null_score_diff_threshold=float(self.cfg.null_score_diff_threshold),
        )
        from prune_cli import metrics

        references = [{"id": ex["id"], "answers": {"text": list(ex["answers"]["text"]),
                                                   "answer_start": list(ex["answers"].get("answer_start", []))}}
                      for ex in raw["examples"]]
        answers = [{"id": qid, "prediction_text": text} for qid, text in predictions.items()]
        self.predictions = {EVAL: {"prediction": [predictions.get(ex["id"]) for ex in raw["examples"]],
                                   "label": [list(ex["answers"]["text"]) for ex in raw["examples"]]}}
        return metrics.load("squad", "v2" if self.version_2 else "v1").compute(predictions=answers,
                                                                                references=references)

    def metric_on(self, predictions, labels) -> dict[str, float]:
        """EM and F1 (0-100) of these questions (predictions.json: answer text, gold answers)."""
        scores = [example_scores(p, tuple(g), self.version_2) for p, g in zip(predictions, labels)]
        return {"exact_match": _percent([s[0] for s in scores]), "f1": _percent([s[1] for s in scores])}


def _cls_index(input_ids: list[int], tokenizer) -> int:
    cls = tokenizer.cls_token_id
    return input_ids.index(cls) if cls is not None and cls in input_ids else 0


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)
