"""Zero-shot multiple choice by log-likelihood, as EleutherAI's lm-evaluation-harness (v0.4.x,
github.com/EleutherAI/lm-evaluation-harness) defines the seven commonsense tasks of LLM-Pruner's
tables (Ma et al. 2023; FLAP reports the same set, Wanda and SliceGPT subsets of it): BoolQ, PIQA,
HellaSwag, WinoGrande, ARC-Easy, ARC-Challenge, OpenBookQA.

What lm-eval does, and this module with it (its task YAMLs `lm_eval/tasks/{super_glue/boolq,
piqa, hellaswag, winogrande, arc, openbookqa}`, `lm_eval/api/task.py`, `lm_eval/api/model.py`,
`lm_eval/models/huggingface.py`):

* Each example gives a context and its choices; a request is (context, " " + choice): the
  target delimiter " " goes in front of the continuation. WinoGrande turns this round ("partial
  scoring", Sakaguchi et al. 2020 / Trinh & Le 2018): the CONTEXT differs per option (the sentence
  up to the blank, the option filled in) and the continuation is the shared rest after the
  blank, stripped, again after " ".
* Prompts (`PROMPTS`): BoolQ "{passage}\\nQuestion: {question}?\\nAnswer:" with " no" / " yes"
  (lm-eval reads SuperGLUE's BoolQ, whose passage is "{title} -- {passage}" of Google's release);
  PIQA and ARC "Question: {q}\\nAnswer:"; OpenBookQA the bare question stem; HellaSwag
  "{activity_label}: {ctx_a} {ctx_b.capitalize()}" and its endings through lm-eval's cleanup
  (strip, " [title]" -> ". ", "[...]" removed, double spaces made single). `str.capitalize`
  lower-cases the rest of ctx_b too, as lm-eval's does.
* Tokens (HFLM with its defaults): trailing whitespace of a context moves to the continuation;
  context + continuation is encoded as ONE string (the tokenizer's special tokens included, e.g.
  a BOS, unless the string already starts with that token's text) and split at the length of the
  context's own encoding, so a merge across the boundary is resolved as the model saw the text.
  Input = (context + continuation)[-(max_length + 1):][:-1]: a context too long is cut from the
  LEFT; the continuation's summed log-probability is read from the last positions.
* `acc` = the argmax of the summed log-likelihoods; `acc_norm` = the argmax of each sum divided by
  the length of the choice IN CHARACTERS (Python `len` of the choice string, without the target
  delimiter; lm-eval's byte-normalised score is a separate `acc_bytes`, not reported by these
  tasks); ties go to the first choice (numpy argmax). lm-eval reports acc_norm for HellaSwag,
  PIQA, ARC and OpenBookQA, acc alone for BoolQ and WinoGrande: the primary metric is acc_norm
  where it exists, else acc.

Scoring batches whole examples (all the choices of an example in one forward), longest first,
right-padded with no attention mask as HFLM calls the model (a causal model never looks right).

Data: the original release files (`task.data_dir`, or <data_root>/zeroshot/<name>), turned into
the rows of the Hub data sets lm-eval reads (`LOCAL`), or those Hub data sets themselves.
`task.max_eval_samples` = the first N examples, so runs pair example by example; per-example
predictions (argmax of acc and of acc_norm) are kept for a paired bootstrap (`metric_on`).

Training: these tasks have no local training split, and the pruning scorers need text to score
heads on. The task's train split is calibration text: windows of `task.max_length` tokens of
WikiText-2 (wiki.train.raw, else wiki.valid.raw, joined with " " as SparseGPT / Wanda join their
calibration text) from `task.calibration_dir` (default <data_root>/wikitext-2-raw), drawn by
`task.max_train_samples` as any task's training rows.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from prune_cli.errors import ConfigError, DataError
from prune_cli.tasks.base import Splits, Task, hub_dataset_available, read_text
from prune_cli.tasks.lm import WIKITEXT_HUB, Runner, WikiText, calibration_windows, lm_collate, load_metric

TARGET_DELIMITER = " "


@dataclass(frozen=True)
class Spec:
    """One task: the Hub data set lm-eval reads (path, config, split), the local release files,
    and the metrics lm-eval reports for it."""

    hub: str
    hub_config: str | None
    split: str
    files: tuple[str, ...]
    metrics: tuple[str, ...]


SPECS = {
    "boolq": Spec("aps/super_glue", "boolq", "validation", ("dev.jsonl",), ("acc",)),
    "piqa": Spec("baber/piqa", None, "validation", ("valid.jsonl", "valid-labels.lst"), ("acc", "acc_norm")),
    "hellaswag": Spec("Rowan/hellaswag", None, "validation", ("hellaswag_val.jsonl",), ("acc", "acc_norm")),
    "winogrande": Spec("allenai/winogrande", "winogrande_xl", "validation", ("dev.jsonl",), ("acc",)),
    "arc_easy": Spec("allenai/ai2_arc", "ARC-Easy", "test", ("ARC-Easy-Test.jsonl",), ("acc", "acc_norm")),
    "arc_challenge": Spec("allenai/ai2_arc", "ARC-Challenge", "test", ("ARC-Challenge-Test.jsonl",),
                          ("acc", "acc_norm")),
    "openbookqa": Spec("allenai/openbookqa", "main", "test", ("test.jsonl",), ("acc", "acc_norm")),
}


# ---------------------------------------------------------------------- release files -> Hub rows
def read_jsonl(path: Path, key: str, given) -> list[dict]:
    rows = []
    for line, text in enumerate(read_text(path, key, given).split("\n"), 1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(key, str(given), path, f"line {line}", f"a JSON object per line ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(key, str(given), path, f"line {line}", "a JSON object per line")
        rows.append(row)
    return rows


def read_lines(path: Path, key: str, given) -> list[str]:
    return [t.strip() for t in read_text(path, key, given).split("\n") if t.strip()]


def _stem_choices(row: dict) -> tuple[str, dict]:
    """ARC / OpenBookQA release rows: question.stem and question.choices [{text, label}]."""
    question = row["question"]
    choices = question["choices"]
    return question["stem"], {"text": [c["text"] for c in choices], "label": [c["label"] for c in choices]}


def _boolq(rows, labels):
    # SuperGLUE's BoolQ (what lm-eval reads) writes the Wikipedia title in front of the passage
    return [{"question": r["question"], "passage": f"{r['title']} -- {r['passage']}", "label": int(bool(r["answer"]))}
            for r in rows]


def _piqa(rows, labels):
    return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(y)} for r, y in zip(rows, labels)]


def _multiple_choice(question_key: str):
    """ARC and OpenBookQA share the release format; their Hub rows name the question differently."""
    def convert(rows, labels):
        return [{"id": r["id"], question_key: stem, "choices": choices, "answerKey": r["answerKey"]}
                for r in rows for stem, choices in [_stem_choices(r)]]
    return convert


_arc, _openbookqa = _multiple_choice("question"), _multiple_choice("question_stem")


def _same(rows, labels):
    return rows


#: a task's release rows (and label lines, PIQA) as the rows of the Hub data set lm-eval reads
LOCAL = {"boolq": _boolq, "piqa": _piqa, "hellaswag": _same, "winogrande": _same, "arc_easy": _arc,
         "arc_challenge": _arc, "openbookqa": _openbookqa}


# ---------------------------------------------------------------------- prompts
@dataclass
class Prompt:
    """One example's requests (context, continuation), the choice strings acc_norm divides by
    and the gold choice."""

    contexts: list[str]
    continuations: list[str]
    choices: list[str]
    gold: int

    @property
    def requests(self) -> list[tuple[str, str]]:
        return list(zip(self.contexts, self.continuations))


def _options(context: str, choices: list[str], gold: int) -> Prompt:
    return Prompt([context] * len(choices), [TARGET_DELIMITER + c for c in choices], list(choices), gold)


def hellaswag_clean(text: str) -> str:
    """lm-eval's `hellaswag/utils.py::preprocess`: the WikiHow rows carry bracketed markup."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _boolq_prompt(doc):
    return _options(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ["no", "yes"], int(doc["label"]))


def _piqa_prompt(doc):
    return _options(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], int(doc["label"]))


def _hellaswag_prompt(doc):
    context = hellaswag_clean(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())
    return _options(context, [hellaswag_clean(e) for e in doc["endings"]], int(doc["label"]))


def _winogrande_prompt(doc):
    blank = doc["sentence"].index("_")
    contexts = [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]
    rest = doc["sentence"][blank + 1 :].strip()
    return Prompt(contexts, [TARGET_DELIMITER + rest] * 2, contexts, {"1": 0, "2": 1}[str(doc["answer"])])


def _arc_prompt(doc):
    choices = doc["choices"]
    return _options(f"Question: {doc['question']}\nAnswer:", list(choices["text"]),
                    list(choices["label"]).index(doc["answerKey"]))


def _openbookqa_prompt(doc):
    choices = doc["choices"]
    return _options(doc["question_stem"], list(choices["text"]), list(choices["label"]).index(doc["answerKey"].lstrip()))


PROMPTS = {"boolq": _boolq_prompt, "piqa": _piqa_prompt, "hellaswag": _hellaswag_prompt,
           "winogrande": _winogrande_prompt, "arc_easy": _arc_prompt, "arc_challenge": _arc_prompt,
           "openbookqa": _openbookqa_prompt}


def prompt(name: str, doc: dict) -> Prompt:
    return PROMPTS[name](doc)


# ---------------------------------------------------------------------- tokens
def _prefix_token(tokenizer) -> int | None:
    """HFLM's `prefix_token_id`: BOS, else EOS (the context of an empty context)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_strings(tokenizer, strings: list[str]) -> dict[str, list[int]]:
    """HFLM's `tok_encode` of each distinct string, in one batched call per kind: the tokenizer's
    special tokens, except for a string that already starts with the prefix token's text."""
    prefix = _prefix_token(tokenizer)
    prefix_text = tokenizer.decode(prefix) if prefix is not None else None
    unique = list(dict.fromkeys(strings))
    out: dict[str, list[int]] = {}
    for special in (True, False):
        group = [s for s in unique if (not (prefix_text is not None and s.startswith(prefix_text))) == special]
        if group:
            kwargs = {} if special else {"add_special_tokens": False}
            out.update(zip(group, tokenizer(group, verbose=False, **kwargs)["input_ids"]))
    return out


def encode_requests(tokenizer, requests: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) of each request, as lm-eval's `TemplateLM.loglikelihood`
    and `_encode_pair` make them for a causal model."""
    moved = []
    for context, continuation in requests:
        spaces = len(context) - len(context.rstrip())
        if spaces and context:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        moved.append((context, continuation))
    wanted = [s for c, x in moved if c for s in (c, c + x)]
    enc = encode_strings(tokenizer, wanted)
    bare = [x for c, x in moved if not c]
    bare_enc = dict(zip(bare, tokenizer(bare, add_special_tokens=False, verbose=False)["input_ids"])) if bare else {}
    out = []
    for context, continuation in moved:
        if not context:  # the prefix token is the context (unless the continuation starts with it)
            cont = list(bare_enc[continuation])
            prefix = _prefix_token(tokenizer)
            out.append(([prefix], cont) if not cont or cont[0] != prefix else (cont[:1], cont[1:]))
            continue
        ctx, whole = enc[context], enc[context + continuation]
        out.append((list(ctx), list(whole[len(ctx):])))
    return out


# ---------------------------------------------------------------------- scoring
def loglikelihoods(model, requests: list[tuple[list[int], list[int]]], groups: list[list[int]], accelerator,
                   batch_size: int, max_length: int) -> list[float]:
    """Summed log-probability of each request's continuation given its context.

    `groups`: the request indices of each example; an example's requests go in one batch, and
    batches hold whole examples up to `batch_size` sequences (at least one example), longest
    first; identical inputs in a batch run once, and only the scored positions reach the
    vocabulary projection. The input is lm-eval's (context + continuation)[-(max_length + 1):][:-1]; log-softmax in
    float32 as lm-eval's, the sum over the continuation's tokens in float64 (lm-eval sums in float32:
    at most a few float32 ulps of the total apart)."""
    inputs, lengths = [], []
    for ctx, cont in requests:
        if len(cont) > max_length:
            raise ConfigError("task.max_length", max_length, f"at least {len(cont)} tokens (a continuation's length)")
        ids = (ctx + cont)[-(max_length + 1):][:-1]
        inputs.append(ids)
        lengths.append(len(cont))
    order = sorted(range(len(groups)), key=lambda g: -max((len(inputs[r]) for r in groups[g]), default=0))
    batches, current = [], []
    for g in order:
        if current and sum(len(groups[x]) for x in current) + len(groups[g]) > batch_size:
            batches.append(current)
            current = []
        current.append(g)
    if current:
        batches.append(current)
    out = []
    with Runner(model, accelerator) as run:
        for batch in run.shard(batches):
            rows = [r for g in batch for r in groups[g]]
            # requests with the same input are one row (BoolQ's " yes" / " no" after one passage,
            # any single-token choices): lm-eval's Collator shares them the same way
            unique = list(dict.fromkeys(tuple(inputs[r]) for r in rows))
            row_of = {ids: i for i, ids in enumerate(unique)}
            width = max(len(u) for u in unique)
            ids = torch.zeros((len(unique), width), dtype=torch.long)
            for i, u in enumerate(unique):
                ids[i, : len(u)] = torch.tensor(u, dtype=torch.long)
            last = width - min(len(inputs[r]) - lengths[r] for r in rows)  # from the batch's first scored position
            logits = run.logits(ids, last=last)
            for r in rows:
                i, n, k = row_of[tuple(inputs[r])], len(inputs[r]), lengths[r]
                target = torch.tensor(requests[r][1], dtype=torch.long, device=logits.device)
                start = n - k - (width - last)  # the positions n-k .. n-1 in the kept tail
                logp = torch.log_softmax(logits[i, start : start + k].float(), dim=-1)
                out.append((r, float(logp.gather(-1, target[:, None]).double().sum())))
        out = sorted(run.gather(out))
    return [ll for _, ll in out]


def choose(lls, choices: list[str]) -> tuple[int, int]:
    """(argmax of the log-likelihoods, argmax of them per character of the choice): acc, acc_norm."""
    lls = np.asarray(lls, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = lls / np.array([float(len(c)) for c in choices])
    return int(np.argmax(lls)), int(np.argmax(norm))


def choice_metrics(predictions, labels, names=("acc", "acc_norm")) -> dict[str, float]:
    """acc / acc_norm of per-example predictions [argmax, normalised argmax] against gold choices."""
    p = np.array([list(x) for x in predictions], dtype=np.int64).reshape(-1, 2)
    y = np.asarray(labels, dtype=np.int64)
    column = {"acc": 0, "acc_norm": 1}
    return {name: float(np.mean(p[:, column[name]] == y)) if len(y) else float("nan") for name in names}


# ---------------------------------------------------------------------- the task
class ZeroShotTask(Task):
    """One of lm-eval's zero-shot multiple-choice tasks (family `zeroshot`, `task.name`): see the
    module docstring."""

    greater_is_better = True

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.name = str(cfg.name)
        self.spec = SPECS.get(self.name)
        self.primary_metric = str(cfg.get("primary_metric") or (self.spec.metrics[-1] if self.spec else "acc"))
        self.calibration = WikiText(cfg.get("calibration_dir"), dict(WIKITEXT_HUB), "task.calibration_dir",
                                    why=" (zero-shot tasks have no training split: training and pruning scorers "
                                    "read WikiText-2 text)")
        self._docs: list[dict] | None = None
        #: per-request log-likelihoods of the last `evaluate`, per example (for side-by-side checks)
        self.loglikelihoods: list[list[float]] | None = None

    @property
    def eval_split(self) -> str:
        return str(self.cfg.get("hub_split") or self.spec.split)

    def hub(self) -> dict:
        cfg = self.cfg
        return {"hub": str(cfg.get("hub") or self.spec.hub),
                "hub_config": cfg.get("hub_config") if cfg.get("hub") else self.spec.hub_config,
                "hub_revision": cfg.get("hub_revision")}

    # 1 ------------------------------------------------------------------ validation
    def validate(self) -> None:
        cfg = self.cfg
        if self.spec is None:
            raise ConfigError("task.name", self.name, f"one of {', '.join(SPECS)} (lm-evaluation-harness's names)")
        if self.primary_metric not in self.spec.metrics:
            raise ConfigError("task.primary_metric", self.primary_metric,
                              f"one of {', '.join(self.spec.metrics)} (what lm-eval reports for {self.name})")
        if cfg.get("data_dir"):
            folder = self._data_dir()
            given = str(cfg.data_dir)
            if not folder.is_dir():
                raise ConfigError("task.data_dir", given, f"an existing folder holding {self.name}'s release files "
                                  f"({', '.join(self.spec.files)})")
            for name in self.spec.files:
                if not (folder / name).is_file():
                    raise ConfigError("task.data_dir", given, f"a {self.name} folder holding {name}")
            self.docs()  # every row parsed and turned into its prompt, before any model loads
        elif not hub_dataset_available(OmegaConf.create(self.hub())):
            hub = self.hub()
            raise ConfigError("task.data_dir", None, f"a local {self.name} folder (task.data_dir=<folder with "
                              f"{', '.join(self.spec.files)}>, or data_root=), or {hub['hub']}"
                              f"{'/' + hub['hub_config'] if hub['hub_config'] else ''} in the Hugging Face cache "
                              "(the Hub is offline here)")
        self.calibration.check((self.calibration.train_split(),))

    def _data_dir(self) -> Path:
        from hydra.utils import to_absolute_path

        return Path(to_absolute_path(str(self.cfg.data_dir)))

    def docs(self) -> list[dict]:
        """The evaluation rows, in the schema of the Hub data set lm-eval reads, each checked by
        building its prompt (a malformed row is a DataError naming its line)."""
        if self._docs is not None:
            return self._docs
        if self.cfg.get("data_dir"):
            folder, given = self._data_dir(), str(self.cfg.data_dir)
            main = folder / self.spec.files[0]
            rows = read_jsonl(main, "task.data_dir", given)
            labels = None
            if len(self.spec.files) > 1:
                labels = read_lines(folder / self.spec.files[1], "task.data_dir", given)
                if len(labels) != len(rows):
                    raise DataError("task.data_dir", given, folder / self.spec.files[1], None,
                                    f"one label per example of {main.name} ({len(labels)} labels, {len(rows)} examples)")
            try:
                docs = LOCAL[self.name](rows, labels)
            except (KeyError, TypeError, ValueError) as err:
                raise DataError("task.data_dir", given, main, None, f"{self.name}'s release format ({err!r})") from None
            where = main
        else:
            import datasets

            hub = self.hub()
            ds = datasets.load_dataset(hub["hub"], hub["hub_config"], split=self.eval_split,
                                       revision=hub["hub_revision"])
            docs, where, given = [dict(r) for r in ds], hub["hub"], None
        for i, doc in enumerate(docs):
            try:
                p = prompt(self.name, doc)
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise DataError("task.data_dir", given, where, f"example {i + 1}", f"a {self.name} example ({err!r})") from None
            if not 0 <= p.gold < len(p.choices):
                raise DataError("task.data_dir", given, where, f"example {i + 1}",
                                f"a gold answer among its {len(p.choices)} choices")
        if not docs:
            raise ConfigError("task.data_dir", given, f"a {self.name} folder with examples")
        self._docs = docs
        return docs

    # 2 ------------------------------------------------------------------ model
    def auto_class(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM

    # 3 ------------------------------------------------------------------ data
    def prompts(self) -> list[Prompt]:
        """The prompts of the examples scored: the first `max_eval_samples`."""
        docs = self.docs()
        idx = self.take(self.eval_split, len(docs))
        return [prompt(self.name, docs[i]) for i in (range(len(docs)) if idx is None else idx)]

    def splits(self, tokenizer) -> Splits:
        prompts = self.prompts()
        requests = encode_requests(tokenizer, [r for p in prompts for r in p.requests])
        examples, start = [], 0
        for p in prompts:
            n = len(p.contexts)
            examples.append({"requests": requests[start : start + n], "choices": p.choices, "gold": p.gold})
            start += n
        train = calibration_windows(self, self.calibration, tokenizer, int(self.cfg.max_length))
        return Splits(train=train, eval={self.eval_split: examples}, eval_raw={self.eval_split: prompts})

    def collate_fn(self, tokenizer):
        return lm_collate

    # 5 ------------------------------------------------------------------ evaluation
    def evaluate(self, model, tokenizer, splits: Splits, accelerator, batch_size: int) -> dict[str, float]:
        examples = splits.eval[self.eval_split]
        requests, groups = [], []
        for ex in examples:
            groups.append(list(range(len(requests), len(requests) + len(ex["requests"]))))
            requests.extend(ex["requests"])
        lls = loglikelihoods(model, requests, groups, accelerator, batch_size, int(self.cfg.max_length))
        self.loglikelihoods = [[lls[r] for r in g] for g in groups]
        metric = load_metric("zeroshot")
        metrics = metric.compute(predictions=self.loglikelihoods, references=[ex["gold"] for ex in examples],
                                 choices=[ex["choices"] for ex in examples], metrics=list(self.spec.metrics))
        preds = [list(choose(ll, ex["choices"])) for ll, ex in zip(self.loglikelihoods, examples)]
        self.predictions = {self.eval_split: {"prediction": preds, "label": [ex["gold"] for ex in examples]}}
        return {**metrics, "samples": len(examples)}

    def metric_on(self, predictions, labels) -> dict[str, float]:
        return choice_metrics(predictions, labels, self.spec.metrics)
