"""Translation models trained from scratch: a tokenizer learnt on the training text, and an
encoder-decoder Transformer built from the YAML's architecture keys.

Why a stock `transformers` class instead of our own module: the head surgery, the gates and
`generate()` (beam search, caching) then work unchanged, and the trained model saves as an
ordinary Hugging Face folder that `AutoModelForSeq2SeqLM` reloads. `MarianMTModel` is the
default because its layout is the one of fairseq's `transformer` (post-norm layers, sinusoidal
positions, embeddings scaled by sqrt(d_model)); `BartForConditionalGeneration` is offered too.

The model YAML (see conf/model/transformer_iwslt.yaml) looks like:

    from_scratch: true
    architecture: marian            # marian | bart
    config: {encoder_layers: 6, ...}   # passed to MarianConfig / BartConfig as is
    tokenizer: {type: bpe, vocab_size: 8000, min_frequency: 2}

Special tokens follow fairseq's dictionary order: <s>=0, <pad>=1, </s>=2, <unk>=3. Every
encoded sequence (source and target) ends with </s>; the decoder starts from <s>.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from numbers import Integral

from omegaconf import DictConfig, OmegaConf

from prune_cli.errors import ConfigError

BOS, PAD, EOS, UNK = "<s>", "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = [BOS, PAD, EOS, UNK]  # ids 0..3, in this order
TOKENIZER_TYPES = ("bpe", "unigram")


def _architectures() -> dict:
    from transformers import BartConfig, BartForConditionalGeneration, MarianConfig, MarianMTModel

    return {"marian": (MarianConfig, MarianMTModel), "bart": (BartConfig, BartForConditionalGeneration)}


# ---------------------------------------------------------------- tokenizer
def train_tokenizer(texts: Iterable[str], tok_cfg: Mapping | None = None):
    """Learn a joint (source + target) subword vocabulary on `texts`, wrapped for transformers.

    Metaspace pre-tokenisation (SentencePiece's "▁" word marker) makes decoding lossless for
    anything seen in training, so `batch_decode(..., skip_special_tokens=True)` yields
    detokenised text that sacreBLEU can score directly; no Moses detokeniser is needed.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok_cfg = _check_tokenizer_cfg(tok_cfg)
    if tok_cfg["type"] == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK))
        trainer = trainers.BpeTrainer(
            vocab_size=tok_cfg["vocab_size"], min_frequency=tok_cfg["min_frequency"],
            special_tokens=SPECIAL_TOKENS, show_progress=False,
        )
    else:
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(
            vocab_size=tok_cfg["vocab_size"], special_tokens=SPECIAL_TOKENS, unk_token=UNK, show_progress=False
        )
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainer=trainer)
    eos_id = tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=1024,
    )


def _check_tokenizer_cfg(tok_cfg) -> dict:
    cfg = {"type": "bpe", "vocab_size": 8000, "min_frequency": 2}
    if tok_cfg is not None:
        cfg.update(OmegaConf.to_container(tok_cfg) if isinstance(tok_cfg, DictConfig) else dict(tok_cfg))
    if cfg["type"] not in TOKENIZER_TYPES:
        raise ConfigError("model.tokenizer.type", cfg["type"], f"one of {', '.join(TOKENIZER_TYPES)}")
    if not _is_int(cfg["vocab_size"]) or cfg["vocab_size"] <= len(SPECIAL_TOKENS):
        raise ConfigError("model.tokenizer.vocab_size", cfg["vocab_size"], f"an integer > {len(SPECIAL_TOKENS)}")
    if not _is_int(cfg["min_frequency"]) or cfg["min_frequency"] < 0:
        raise ConfigError("model.tokenizer.min_frequency", cfg["min_frequency"], "a non-negative integer")
    return cfg


# ---------------------------------------------------------------- model
def model_config(model_cfg: DictConfig, tokenizer=None):
    """The architecture's config from YAML, without building weights.

    Without a tokenizer the vocabulary size is the YAML's `tokenizer.vocab_size` (what validation
    needs: the head count does not depend on it); with one, the trained tokenizer's real size
    and special-token ids are used.
    """
    arch = model_cfg.get("architecture", "marian")
    archs = _architectures()
    if arch not in archs:
        raise ConfigError("model.architecture", arch, f"one of {', '.join(archs)}")
    from huggingface_hub.errors import StrictDataclassError

    config_cls = archs[arch][0]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    arch_keys = OmegaConf.to_container(model_cfg.get("config") or OmegaConf.create({}))
    unknown = sorted(set(arch_keys) - fields)
    if unknown:
        raise ConfigError(f"model.config.{unknown[0]}", arch_keys[unknown[0]], f"a {config_cls.__name__} field")
    for side in ("encoder", "decoder"):
        d, h = arch_keys.get("d_model", 512), arch_keys.get(f"{side}_attention_heads", 4)
        if _is_int(d) and _is_int(h) and (h < 1 or d % h):
            raise ConfigError(f"model.config.{side}_attention_heads", h, f"a positive divisor of d_model={d}")

    if tokenizer is None:
        vocab = _check_tokenizer_cfg(model_cfg.get("tokenizer"))["vocab_size"]
        ids = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    else:
        vocab = len(tokenizer)
        ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    special = {
        "vocab_size": vocab, "pad_token_id": ids[PAD], "bos_token_id": ids[BOS], "eos_token_id": ids[EOS],
        "decoder_start_token_id": ids[BOS], "forced_eos_token_id": ids[EOS],
        "attn_implementation": model_cfg.get("attn_implementation", "sdpa"),
    }
    if arch == "marian":
        special["decoder_vocab_size"] = vocab
    special["architectures"] = [archs[arch][1].__name__]  # what HeadSpace.from_config instantiates
    try:
        config = config_cls(**{**arch_keys, **special})
    except (StrictDataclassError, TypeError, ValueError) as err:  # strict dataclass: a field's type
        # the message reads "Validation error for field 'd_model':\n    TypeError: ... expected int"
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        field = re.search(r"field '(\w+)'", lines[0]) if lines else None
        if field and field.group(1) in arch_keys:
            raise ConfigError(f"model.config.{field.group(1)}", arch_keys[field.group(1)], lines[-1]) from None
        raise ConfigError("model.config", arch_keys, " ".join(lines)) from None
    return config


def build_model(model_cfg: DictConfig, tokenizer):
    """A randomly initialised seq2seq model sized to `tokenizer` (seed torch before calling)."""
    config = model_config(model_cfg, tokenizer)
    model_cls = _architectures()[model_cfg.get("architecture", "marian")][1]
    return model_cls(config)


def _is_int(v) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)
