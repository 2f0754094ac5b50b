"""Machine translation: IWSLT14 De-En, Multi30k De-En, WMT16 En-Ro (any parallel corpus, really).

Data comes either from a local folder of parallel text files `{split}.{lang}` or
`{split}.{lang}.gz` (one sentence a line; the file names per split are configurable, so both the
Multi30k release and the output of fairseq's prepare-iwslt14.sh load as they are), or from a Hub
data set with a `translation` column ({lang: text}) or one column per language.

The metric is sacreBLEU's corpus BLEU on detokenised output, decoded by beam search. Its
signature (tokeniser, smoothing, version: what makes a BLEU score comparable) is kept in
`task.metric_info["bleu_signature"]` after every `evaluate()`, for the run's metrics.json.

Pretrained models (Marian, BART, T5) load by Hub name or folder; `from_scratch: true` models get a
tokenizer learnt on this task's training text and random weights (`prune_cli.scratch`).
"""

from __future__ import annotations

from contextlib import nullcontext
from numbers import Integral, Real
from pathlib import Path

import torch
from omegaconf import DictConfig

from prune_cli import progress
from prune_cli.errors import ConfigError
from prune_cli.tasks.base import Splits, Task, check_hub_splits, hub_dataset_available, read_text

SPLITS = ("train", "validation", "test")
EVAL_SPLITS = ("validation", "test")
# For `source_prefix` templates such as T5's "translate {source} to {target}: ".
LANGUAGE_NAMES = {"de": "German", "en": "English", "ro": "Romanian", "fr": "French", "cs": "Czech"}


def read_lines(path: Path, remove_bpe: str | None = None) -> list[str]:
    """Lines of a plain or gzipped UTF-8 text file, split on "\\n" only.

    Not `str.splitlines()`: that also splits on U+2028, U+0085 and friends, which do occur inside
    sentences of web-crawled corpora and would silently misalign source and target.
    `remove_bpe` undoes subword-nmt style segmentation (fairseq's --remove-bpe, e.g. "@@ ").
    """
    lines = read_text(path).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line.rstrip("\r") for line in lines]
    if remove_bpe:
        lines = [(line + " ").replace(remove_bpe, "").rstrip() for line in lines]
    return lines


def corpus_bleu(hypotheses: list[str], references: list[str] | list[list[str]], tokenize: str = "13a"
                ) -> tuple[float, str]:
    """sacreBLEU corpus BLEU and its signature string; `references`: one string per sentence, or
    per sentence a list of them (the same number each)."""
    from sacrebleu.metrics import BLEU

    several = bool(references) and isinstance(references[0], (list, tuple))
    streams = [list(s) for s in zip(*references)] if several else [list(references)]
    bleu = BLEU(tokenize=tokenize)
    return float(bleu.corpus_score(hypotheses, streams).score), str(bleu.get_signature())


class TranslationTask(Task):
    primary_metric = "bleu"
    greater_is_better = True

    def __init__(self, cfg: DictConfig):
        super().__init__(cfg)
        self.name = cfg.name
        self.metric_info: dict[str, str] = {}
        self._pairs_cache: dict[str, tuple[list[str], list[str]]] = {}

    # 1 ------------------------------------------------------------------ validation
    def validate(self) -> None:
        cfg = self.cfg
        src, tgt = cfg.get("source_lang"), cfg.get("target_lang")
        for key, lang in (("task.source_lang", src), ("task.target_lang", tgt)):
            if not isinstance(lang, str) or not lang:
                raise ConfigError(key, lang, "a language code such as de, en or ro")
        if src == tgt:
            raise ConfigError("task.target_lang", tgt, f"a language other than source_lang={src}")
        if cfg.get("eval_split") not in EVAL_SPLITS:
            raise ConfigError("task.eval_split", cfg.get("eval_split"), f"one of {', '.join(EVAL_SPLITS)}")
        for key in ("num_beams", "max_new_tokens", "max_source_length", "max_target_length"):
            v = cfg.get(key)
            if not _is_int(v) or v < 1:
                raise ConfigError(f"task.{key}", v, "a positive integer")
        lp = cfg.get("length_penalty")
        if not isinstance(lp, Real) or isinstance(lp, bool):
            raise ConfigError("task.length_penalty", lp, "a number (1.0 = average log-probability per token)")
        from sacrebleu.metrics.bleu import _TOKENIZERS

        if cfg.get("bleu_tokenize", "13a") not in _TOKENIZERS:
            raise ConfigError("task.bleu_tokenize", cfg.get("bleu_tokenize"), f"one of {', '.join(_TOKENIZERS)}")
        if cfg.get("data_dir"):
            self._validate_local()
        elif cfg.get("hub"):
            self._validate_hub()
        else:
            raise ConfigError("task.data_dir", None, "a folder of {split}.{lang}[.gz] files, or task.hub=<data set id>")

    def _needed_splits(self) -> list[str]:
        return ["train", self.cfg.eval_split]

    def _validate_local(self) -> None:
        folder = self._data_dir()
        if not folder.is_dir():
            raise ConfigError("task.data_dir", str(self.cfg.data_dir), "an existing folder")
        names = self.cfg.get("local_splits") or {}
        for split in self._needed_splits():
            if not names.get(split):
                raise ConfigError(f"task.local_splits.{split}", names.get(split), "the file stem of that split, e.g. valid")
            counts = {}
            for lang in (self.cfg.source_lang, self.cfg.target_lang):
                path = self._local_file(split, lang)
                if path is None:
                    stem = folder / f"{names[split]}.{lang}"
                    raise ConfigError("task.data_dir", str(self.cfg.data_dir), f"a folder holding {stem} or {stem}.gz")
                counts[path.name] = len(read_lines(path))
            (a, n_a), (b, n_b) = counts.items()
            if n_a != n_b:
                raise ConfigError("task.data_dir", str(self.cfg.data_dir), f"parallel files with equal line counts ({a}: {n_a}, {b}: {n_b})")
            if n_a == 0:
                raise ConfigError("task.data_dir", str(self.cfg.data_dir), f"non-empty {split} files ({a} is empty)")

    def _validate_hub(self) -> None:
        check_hub_splits(self.cfg, self._needed_splits())
        if not hub_dataset_available(self.cfg):
            raise ConfigError(
                "task.hub", str(self.cfg.hub),
                "a data set in the local Hugging Face cache (the Hub is offline here) or task.data_dir=<folder>",
            )

    # 2 ------------------------------------------------------------------ model
    def auto_class(self):
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def _from_scratch(self, model_cfg: DictConfig) -> bool:
        # a `path` wins: that is a model trained from scratch earlier, saved with its tokenizer
        return bool(model_cfg.get("from_scratch")) and not model_cfg.get("path")

    def model_config(self, model_cfg: DictConfig):
        if self._from_scratch(model_cfg):
            from prune_cli import scratch

            return scratch.model_config(model_cfg)
        return super().model_config(model_cfg)

    def load_model(self, model_cfg: DictConfig):
        if not self._from_scratch(model_cfg):
            return super().load_model(model_cfg)
        from prune_cli import scratch

        sources, targets = self._pairs("train")
        tokenizer = scratch.train_tokenizer(sources + targets, model_cfg.get("tokenizer"))
        model = scratch.build_model(model_cfg, tokenizer)
        tokenizer.model_max_length = model.config.max_position_embeddings
        return model, tokenizer

    # 3 ------------------------------------------------------------------ data
    def _data_dir(self) -> Path:
        from hydra.utils import to_absolute_path

        return Path(to_absolute_path(str(self.cfg.data_dir)))

    def _local_file(self, split: str, lang: str) -> Path | None:
        stem = self._data_dir() / f"{self.cfg.local_splits[split]}.{lang}"
        for path in (stem, stem.with_name(stem.name + ".gz")):
            if path.is_file():
                return path
        return None

    def _pairs(self, split: str) -> tuple[list[str], list[str]]:
        """(sources, targets) of a split, capped by max_train_samples / max_eval_samples (`Task.take`)."""
        if split not in self._pairs_cache:
            src, tgt = self.cfg.source_lang, self.cfg.target_lang
            if self.cfg.get("data_dir"):
                remove_bpe = self.cfg.get("remove_bpe")
                sources = read_lines(self._local_file(split, src), remove_bpe)
                targets = read_lines(self._local_file(split, tgt), remove_bpe)
            else:
                sources, targets = self._hub_pairs(split)
            idx = self.take(split, len(sources))
            if idx is not None:
                sources, targets = [sources[i] for i in idx], [targets[i] for i in idx]
            self._pairs_cache[split] = (sources, targets)
        return self._pairs_cache[split]

    def _hub_pairs(self, split: str) -> tuple[list[str], list[str]]:
        import datasets

        ds = datasets.load_dataset(
            str(self.cfg.hub), self.cfg.get("hub_config"), split=self.cfg.hub_splits[split],
            revision=self.cfg.get("hub_revision"),
        )
        src, tgt = self.cfg.source_lang, self.cfg.target_lang
        if "translation" in ds.column_names:  # WMT / IWSLT style: {"translation": {"de": ..., "en": ...}}
            rows = ds["translation"]
            return [r[src] for r in rows], [r[tgt] for r in rows]
        missing = [lang for lang in (src, tgt) if lang not in ds.column_names]
        if missing:
            raise ConfigError("task.hub", str(self.cfg.hub), f"a data set with a translation column or columns {src} and {tgt} (has {ds.column_names})")
        return list(ds[src]), list(ds[tgt])

    def source_prefix(self) -> str:
        """Text put before every source sentence (T5's task prefix); {source}/{target} become
        language names, so one model YAML serves every language pair."""
        prefix = self.cfg.get("source_prefix") or ""
        names = {k: LANGUAGE_NAMES.get(self.cfg[f"{k}_lang"], self.cfg[f"{k}_lang"]) for k in ("source", "target")}
        return prefix.format(**names)

    def _encode(self, tokenizer, split: str):
        import datasets

        sources, targets = self._pairs(split)
        prefix = self.source_prefix()
        ds = datasets.Dataset.from_dict({"source": [prefix + s for s in sources], "target": targets})

        def tokenize(batch):
            # two calls: source and target have their own length limits (and, for Marian, their
            # own SentencePiece models, which `text_target` switches to)
            enc = tokenizer(batch["source"], truncation=True, max_length=int(self.cfg.max_source_length))
            labels = tokenizer(text_target=batch["target"], truncation=True, max_length=int(self.cfg.max_target_length))
            enc["labels"] = labels["input_ids"]
            return enc

        return ds.map(tokenize, batched=True, remove_columns=["source", "target"], keep_in_memory=True,
                      new_fingerprint=f"{self.name}-{split}-{len(sources)}")

    def splits(self, tokenizer) -> Splits:
        split = self.cfg.eval_split
        sources, references = self._pairs(split)
        return Splits(
            train=self._encode(tokenizer, "train"),
            eval={split: self._encode(tokenizer, split)},
            eval_raw={split: {"sources": sources, "references": references}},
        )

    def collate_fn(self, tokenizer):
        """Pads input_ids/attention_mask with the pad id and labels with -100 (ignored by the loss);
        the model shifts labels right itself to make decoder inputs."""
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, return_tensors="pt")

    # 5 ------------------------------------------------------------------ evaluation
    def translate(self, model, tokenizer, dataset, accelerator=None, batch_size: int = 32) -> list[str]:
        """Beam-search translations of an encoded split, in the split's order.

        Sentences are batched by source length (far less padding, so beam search runs faster)
        and put back in order afterwards. Under accelerate each process translates a shard and
        the results are gathered.
        """
        from torch.utils.data import DataLoader
        from transformers import DataCollatorWithPadding

        input_ids, attention = dataset["input_ids"], dataset["attention_mask"]
        order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
        rows = [{"input_ids": input_ids[i], "attention_mask": attention[i]} for i in order]
        loader = DataLoader(rows, batch_size=batch_size, collate_fn=DataCollatorWithPadding(tokenizer, return_tensors="pt"))
        if accelerator is not None:
            loader = accelerator.prepare_data_loader(loader)
            net = accelerator.unwrap_model(model)
            device, autocast = accelerator.device, accelerator.autocast()
        else:
            net, device, autocast = model, next(model.parameters()).device, nullcontext()
        net.to(device)
        was_training = net.training
        net.eval()
        gen = {
            "num_beams": int(self.cfg.num_beams), "length_penalty": float(self.cfg.length_penalty),
            "max_new_tokens": int(self.cfg.max_new_tokens),
        }
        outputs: list[str] = []
        try:
            with torch.no_grad(), autocast:
                for batch in progress.bar(loader, "generating"):
                    batch = {k: v.to(device) for k, v in batch.items()}
                    ids = net.generate(**batch, **gen)
                    if accelerator is not None:
                        ids = accelerator.pad_across_processes(ids, dim=1, pad_index=tokenizer.pad_token_id)
                        ids = accelerator.gather_for_metrics(ids)
                    outputs += tokenizer.batch_decode(ids, skip_special_tokens=True)
        finally:
            net.train(was_training)
        hypotheses = [""] * len(order)
        for pos, i in enumerate(order):
            hypotheses[i] = outputs[pos].strip()
        return hypotheses

    def evaluate(self, model, tokenizer, splits: Splits, accelerator, batch_size: int) -> dict[str, float]:
        split = self.cfg.eval_split
        hypotheses = self.translate(model, tokenizer, splits.eval[split], accelerator, batch_size)
        references = splits.eval_raw[split]["references"]
        from prune_cli import metrics

        out = metrics.load("sacrebleu").compute(predictions=hypotheses, references=[[r] for r in references],
                                                tokenize=self.cfg.get("bleu_tokenize", "13a"))
        self.metric_info = {"bleu_signature": out["signature"]}
        return {"bleu": out["bleu"]}


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)
