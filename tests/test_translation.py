"""Translation task family and from-scratch models, on the real Multi30k files (a few dozen lines)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
import torch
from conftest import group_cfg
from omegaconf import OmegaConf

from prune_cli import scratch
from prune_cli.errors import ConfigError
from prune_cli.gates import Gates
from prune_cli.heads import HeadSpace
from prune_cli.surgery import build_model, count_params, load_pruned, remove_heads, save_pruned
from prune_cli.tasks import get_task
from prune_cli.tasks.translation import TranslationTask, corpus_bleu, read_lines

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MULTI30K = Path(__file__).resolve().parents[2] / "shared" / "data" / "translation" / "multi30k-de-en" / "raw"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the 2 shared cores usually run other jobs too, and two spinning OpenMP
    threads then make these small-matrix loops several times slower (measured 50 s vs 9 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def task_cfg(name: str = "multi30k_de_en", **overrides):
    cfg = group_cfg("task", name)
    cfg.data_dir = str(MULTI30K)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def model_cfg(name: str = "transformer_tiny", **overrides):
    cfg = group_cfg("model", name)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def real_lines(n: int, lang: str, split: str = "train") -> list[str]:
    with gzip.open(MULTI30K / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


# ------------------------------------------------------------------ data
def test_reads_real_multi30k_gz_and_caps_rows():
    task = get_task(task_cfg(max_train_samples=24, max_eval_samples=5, subsample="first"))
    assert isinstance(task, TranslationTask) and task.primary_metric == "bleu"
    task.validate()
    src, tgt = task._pairs("train")
    assert len(src) == len(tgt) == 24
    assert src[0] == "Zwei junge weiße Männer sind im Freien in der Nähe vieler Büsche."
    assert tgt[0] == "Two young, White males are outside near many bushes."
    val_src, _ = task._pairs("validation")
    assert len(val_src) == 5 and val_src[0] != src[0]


def test_local_plain_files_with_fairseq_names_and_remove_bpe(tmp_path):
    # prepare-iwslt14.sh layout: train/valid/test.{de,en}, subword-nmt "@@ " markers
    (tmp_path / "train.de").write_text("ein Hau@@ s\nzwei\n", encoding="utf-8")
    (tmp_path / "train.en").write_text("a hou@@ se\ntwo\n", encoding="utf-8")
    (tmp_path / "test.de").write_text("drei\u2028vier\n", encoding="utf-8")  # U+2028 is not a line break
    (tmp_path / "test.en").write_text("three four\n", encoding="utf-8")
    cfg = task_cfg("iwslt14_de_en", data_dir=str(tmp_path), remove_bpe="@@ ")
    task = get_task(cfg)
    task.validate()
    assert task._pairs("train") == (["ein Haus", "zwei"], ["a house", "two"])
    assert task._pairs("test") == (["drei\u2028vier"], ["three four"])
    assert read_lines(tmp_path / "train.de") == ["ein Hau@@ s", "zwei"]


def test_validate_missing_folder():
    with pytest.raises(ConfigError, match=r"task\.data_dir='/no/such/dir': an existing folder"):
        get_task(task_cfg(data_dir="/no/such/dir")).validate()


def test_validate_missing_file_names_the_file(tmp_path):
    (tmp_path / "train.de").write_text("a\n")
    (tmp_path / "train.en").write_text("a\n")
    (tmp_path / "valid.de").write_text("a\n")
    cfg = task_cfg("iwslt14_de_en", data_dir=str(tmp_path), eval_split="validation")
    with pytest.raises(ConfigError, match=r"task\.data_dir=.*a folder holding .*valid\.en or .*valid\.en\.gz"):
        get_task(cfg).validate()


def test_validate_mismatched_line_counts(tmp_path):
    with gzip.open(tmp_path / "train.de.gz", "wt", encoding="utf-8") as f:
        f.write("eins\nzwei\ndrei\n")
    (tmp_path / "train.en").write_text("one\ntwo\n")
    (tmp_path / "valid.de").write_text("a\n")
    (tmp_path / "valid.en").write_text("a\n")
    cfg = task_cfg("iwslt14_de_en", data_dir=str(tmp_path), eval_split="validation")
    with pytest.raises(ConfigError) as err:
        get_task(cfg).validate()
    assert "equal line counts (train.de.gz: 3, train.en: 2)" in str(err.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"eval_split": "dev"}, "task.eval_split='dev': one of validation, test"),
        ({"target_lang": "de"}, "task.target_lang='de': a language other than source_lang=de"),
        ({"num_beams": 0}, "task.num_beams=0: a positive integer"),
        ({"bleu_tokenize": "moses"}, "task.bleu_tokenize='moses': one of"),
        ({"data_dir": None, "hub": None}, "task.data_dir=None: a folder of"),
    ],
)
def test_validate_bad_values(overrides, message):
    with pytest.raises(ConfigError) as err:
        get_task(task_cfg(**overrides)).validate()
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_hub_dataset_offline_without_cache_fails_fast(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = task_cfg("wmt16_en_ro", data_dir=None)
    with pytest.raises(ConfigError, match=r"task\.hub='wmt/wmt16': a data set in the local Hugging Face cache"):
        get_task(cfg).validate()


def test_source_prefix_comes_from_the_model_yaml():
    full = OmegaConf.create({"model": model_cfg("t5_small"), "task": task_cfg("wmt16_en_ro")})
    assert get_task(full.task).source_prefix() == "translate English to Romanian: "
    full = OmegaConf.create({"model": model_cfg("marian_de_en"), "task": task_cfg()})
    assert get_task(full.task).source_prefix() == ""
    alone = task_cfg(source_prefix="translate {source} to {target}: ")  # explicit task override
    assert get_task(alone).source_prefix() == "translate German to English: "


# ------------------------------------------------------------------ tokenizer + model
def test_tokenizer_trained_on_real_text_round_trips(tmp_path):
    from transformers import AutoTokenizer

    texts = real_lines(200, "de") + real_lines(200, "en")
    tok = scratch.train_tokenizer(texts, {"type": "bpe", "vocab_size": 1000, "min_frequency": 2})
    assert [tok.convert_tokens_to_ids(t) for t in scratch.SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert 500 < len(tok) <= 1000
    ids = tok(texts[:50])["input_ids"]
    assert all(seq[-1] == tok.eos_token_id for seq in ids)
    assert tok.batch_decode(ids, skip_special_tokens=True) == texts[:50]
    assert len(ids[0]) < len(texts[0].split()) * 3  # subwords, not characters
    tok.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(texts[:5])["input_ids"] == ids[:5]

    uni = scratch.train_tokenizer(texts, {"type": "unigram", "vocab_size": 600})
    assert uni.batch_decode(uni(texts[:20])["input_ids"], skip_special_tokens=True) == texts[:20]


def test_bad_scratch_model_yaml_raises_config_error():
    with pytest.raises(ConfigError, match=r"model\.architecture='gpt': one of marian, bart"):
        scratch.model_config(model_cfg(architecture="gpt"))
    with pytest.raises(ConfigError, match=r"model\.config\.encoder_layer=2: a MarianConfig field"):
        scratch.model_config(model_cfg(**{"config.encoder_layer": 2}))
    with pytest.raises(ConfigError, match=r"model\.config\.decoder_attention_heads=3: a positive divisor of d_model=128"):
        scratch.model_config(model_cfg(**{"config.decoder_attention_heads": 3}))
    with pytest.raises(ConfigError, match=r"model\.tokenizer\.type='wordpiece'"):
        scratch.model_config(model_cfg(**{"tokenizer.type": "wordpiece"}))
    with pytest.raises(ConfigError, match=r"^model\.config\.d_model='wide': TypeError: .*expected int"):
        scratch.model_config(model_cfg(**{"config.d_model": "wide"}))


def test_iwslt_yaml_is_fairseq_transformer_iwslt_de_en():
    config = get_task(task_cfg("iwslt14_de_en")).model_config(model_cfg("transformer_iwslt"))
    assert type(config).__name__ == "MarianConfig"
    assert (config.encoder_layers, config.decoder_layers) == (6, 6)
    assert (config.encoder_attention_heads, config.decoder_attention_heads) == (4, 4)
    assert (config.d_model, config.encoder_ffn_dim, config.decoder_ffn_dim) == (512, 1024, 1024)
    assert config.vocab_size == 8000 and config.decoder_start_token_id == 0 and config.pad_token_id == 1


def test_iwslt_heads_counted_from_config_on_meta_device():
    """What validation does before any weights exist: 6x4 encoder + 6x4 decoder + 6x4 cross."""
    config = get_task(task_cfg("iwslt14_de_en")).model_config(model_cfg("transformer_iwslt"))
    space = HeadSpace.from_config(config)
    assert space.total == 72 and space.kinds() == {"encoder": 24, "decoder": 24, "cross": 24}
    assert {b.head_dim for b in space.blocks} == {128}
    with torch.device("meta"):
        model = build_model(config)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    # by hand, d=512, FFN 1024: attention 4(d^2+d), FFN 2*d*1024+1024+d, LayerNorm 2d each;
    # encoder layer: attention + FFN + 2 LN; decoder layer: 2 attentions + FFN + 3 LN;
    # one shared 8000 x d embedding; two 1024 x d sinusoidal position tables (frozen parameters)
    attention, ffn, norm = 4 * (512 * 512 + 512), 2 * 512 * 1024 + 1024 + 512, 2 * 512
    expected = 6 * (attention + ffn + 2 * norm) + 6 * (2 * attention + ffn + 3 * norm) + 8000 * 512 + 2 * 1024 * 512
    assert count_params(model) == expected == 36_687_872


@pytest.fixture(scope="module")
def tiny():
    """transformer_tiny built by the task from 40 real training pairs; 8 real validation pairs."""
    task = get_task(task_cfg(max_train_samples=40, max_eval_samples=8, num_beams=2, max_new_tokens=8,
                             subsample="first"))
    task.validate()
    torch.manual_seed(0)
    model, tok = task.load_model(model_cfg())
    return task, model, tok, task.splits(tok)


def test_tiny_model_built_from_yaml_with_trained_tokenizer(tiny):
    _, model, tok, _ = tiny
    assert type(model).__name__ == "MarianMTModel"
    assert model.config.vocab_size == len(tok) and model.config._attn_implementation == "sdpa"
    assert model.get_input_embeddings().weight.shape == (len(tok), 128)
    # shared embeddings: encoder, decoder and output projection are one matrix
    assert model.get_encoder().embed_tokens.weight.data_ptr() == model.lm_head.weight.data_ptr()
    assert tok.model_max_length == 256


def test_tiny_model_head_count(tiny):
    space = HeadSpace.from_model(tiny[1])
    assert space.total == 24  # 2 layers x 4 heads x (encoder self, decoder self, cross)
    for scope in ("encoder", "decoder", "cross"):
        assert int(space.scope_mask(scope).sum()) == 8


def test_rows_have_labels_and_collate_pads_them_with_minus_100(tiny):
    task, model, tok, splits = tiny
    rows = [splits.train[i] for i in range(4)]
    assert all(r["labels"][-1] == tok.eos_token_id for r in rows)
    batch = task.collate_fn(tok)(rows)
    longest = max(len(r["labels"]) for r in rows)
    assert batch["labels"].shape == (4, longest)
    shortest = min(range(4), key=lambda i: len(rows[i]["labels"]))
    assert (batch["labels"][shortest, len(rows[shortest]["labels"]):] == -100).all()
    assert (batch["input_ids"] == tok.pad_token_id).sum() == (batch["attention_mask"] == 0).sum()
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.item() > 1.0  # untrained: about log(vocab)


def test_evaluate_random_tiny_model_on_real_examples(tiny):
    task, model, tok, splits = tiny
    metrics = task.evaluate(model, tok, splits, None, batch_size=4)
    assert set(metrics) == {"bleu"} and 0.0 <= metrics["bleu"] < 5.0
    assert task.metric_info["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")
    assert len(splits.eval_raw["validation"]["references"]) == 8


def test_overfit_eight_sentences_reaches_bleu_100():
    """The whole chain (labels, decoder start, eos, beam search, detokenised decoding) is right
    only if a model that memorised 8 pairs translates them back exactly."""
    cfg = task_cfg(max_train_samples=8, max_eval_samples=8, num_beams=2, max_new_tokens=40, subsample="first",
                   **{"local_splits.validation": "train"})
    task = get_task(cfg)
    torch.manual_seed(0)
    narrow = {"config.d_model": 64, "config.encoder_ffn_dim": 128, "config.decoder_ffn_dim": 128}
    model, tok = task.load_model(model_cfg(**{"config.dropout": 0.0, "tokenizer.vocab_size": 300, **narrow}))
    splits = task.splits(tok)
    batch = task.collate_fn(tok)([splits.train[i] for i in range(8)])
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(60):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    hyps = task.translate(model, tok, splits.eval["validation"], None, batch_size=3)
    assert hyps == splits.eval_raw["validation"]["references"]
    assert task.evaluate(model, tok, splits, None, batch_size=8)["bleu"] == pytest.approx(100.0)
    assert model.training  # evaluate restores the training mode


# ------------------------------------------------------------------ metric
def test_sacrebleu_known_values():
    same = ["Two young, White males are outside near many bushes.", "A man is sleeping."]
    score, signature = corpus_bleu(same, same)
    assert score == pytest.approx(100.0)
    assert signature == f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{__import__('sacrebleu').__version__}"
    # by hand: 1-grams 5/6, 2-grams 3/5, 3-grams 1/4, 4-grams 0/3 -> exp smoothing 1/(2*3); BP = 1
    score, _ = corpus_bleu(["the cat is on the mat"], ["the cat sat on the mat"])
    assert score == pytest.approx(100 * (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25)
    assert corpus_bleu(["completely different words"], ["the cat sat on the mat"])[0] < 5


# ------------------------------------------------------------------ training, pruning, reloading
def test_tiny_trains_with_trainer_options_then_beam_searches():
    """The trainer's MT options (label smoothing, inverse-sqrt warm-up) drive a from-scratch model,
    and generate() runs a real beam search on it (beams ranked by score)."""
    from prune_cli.train import make_accelerator, train

    task = get_task(task_cfg(max_train_samples=40, max_eval_samples=4))
    torch.manual_seed(0)
    model, tok = task.load_model(model_cfg(**{"config.dropout": 0.0}))
    splits = task.splits(tok)
    batch = task.collate_fn(tok)([splits.train[i] for i in range(40)])
    tcfg = OmegaConf.merge(
        group_cfg("trainer", "default"),
        {"max_steps": 6, "batch_size": 8, "lr": 1e-3, "lr_scheduler": "inverse_sqrt", "warmup_steps": 2,
         "label_smoothing": 0.1, "progress_bar": False, "save_every": 0},
    )
    model.eval()
    with torch.no_grad():
        before = model(**batch).loss.item()
    result = train(model=model, dataset=splits.train, collate_fn=task.collate_fn(tok), tcfg=tcfg,
                   accelerator=make_accelerator(tcfg, 0), seed=0)
    model.eval()
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert result["steps"] == 6 and after < before - 0.25

    enc = task.collate_fn(tok)([{k: splits.eval["validation"][i][k] for k in ("input_ids", "attention_mask")}
                                for i in range(2)])
    out = model.generate(**enc, num_beams=3, num_return_sequences=3, max_new_tokens=6,
                         output_scores=True, return_dict_in_generate=True)
    assert out.sequences.shape[0] == 6 and (out.sequences[:, 0] == tok.bos_token_id).all()
    scores = out.sequences_scores.view(2, 3)
    assert (scores[:, :-1] >= scores[:, 1:]).all()  # best beam first


def _enc_dec_mask(space: HeadSpace) -> torch.Tensor:
    """Keep mask over all three attention kinds: decoder self-attention of layer 0 and
    cross-attention of layer 0 lose every head, cross-attention of layer 1 keeps heads 1 and 3,
    encoder layer 0 loses head 1."""
    keep = torch.ones(space.total, dtype=torch.bool)
    drop = {("decoder", 0): (0, 1, 2, 3), ("cross", 0): (0, 1, 2, 3), ("cross", 1): (0, 2), ("encoder", 0): (1,)}
    for block in space.blocks:
        for h in drop.get((block.kind, block.layer), ()):
            keep[block.offset + h] = False
    return keep


def _logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits


def test_gate_equals_surgery_and_generation_with_cache(tiny, tmp_path):
    import copy

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    task, dense, tok, splits = tiny
    dense = copy.deepcopy(dense).eval()
    rows = [splits.eval["validation"][i] for i in range(4)]
    batch = task.collate_fn(tok)(rows)  # padded: the 4 real sentences differ in length
    assert (batch["attention_mask"] == 0).any()
    sources = task.collate_fn(tok)([{k: r[k] for k in ("input_ids", "attention_mask")} for r in rows])
    gen = {"num_beams": 3, "max_new_tokens": 8, "do_sample": False}

    space = HeadSpace.from_model(dense)
    keep = _enc_dec_mask(space)
    with Gates(dense, space) as gates:
        gates.set(keep.float())
        gated_logits = _logits(dense, batch)
        gated_ids = dense.generate(**sources, **gen)
    pruned = copy.deepcopy(dense)
    new_space = remove_heads(pruned, keep, space)
    assert new_space.total == 24 - 11
    assert [b.heads for b in new_space.blocks if b.kind == "cross"] == [(), (1, 3)]
    assert (_logits(pruned, batch) - gated_logits).abs().max().item() < 1e-5
    assert not torch.allclose(_logits(dense, batch), gated_logits)  # the mask did change the model
    # beam search with the KV cache (cross-attention keys/values with fewer heads, an empty
    # decoder self-attention) gives what the gated model and the cache-less decoding give
    assert torch.equal(pruned.generate(**sources, **gen), gated_ids)
    assert torch.equal(pruned.generate(**sources, **gen, use_cache=False), gated_ids)

    # the checkpoint reloads with its pruned shapes and its trained tokenizer
    save_pruned(pruned, tmp_path / "model", tok)
    reloaded = load_pruned(tmp_path / "model", auto_class=AutoModelForSeq2SeqLM)
    tok2 = AutoTokenizer.from_pretrained(tmp_path / "model")
    assert HeadSpace.from_model(reloaded).describe() == new_space.describe()
    per_head = 3 * (128 * 32 + 32) + 128 * 32  # q, k, v rows (+ bias) and out_proj columns of one head
    assert count_params(reloaded) == count_params(pruned) == count_params(dense) - 11 * per_head
    assert torch.equal(_logits(reloaded, batch), _logits(pruned, batch))
    assert tok2(task._pairs("validation")[0][:4])["input_ids"] == [r["input_ids"] for r in rows]
    assert torch.equal(reloaded.generate(**sources, **gen), gated_ids)


def test_trained_model_reloads_by_path_without_retraining_the_tokenizer(tiny, tmp_path):
    """`model=transformer_iwslt model.path=<run>/model`: train once, prune many times."""
    task, dense, tok, splits = tiny
    save_pruned(dense, tmp_path, tok)
    model, tok2 = task.load_model(model_cfg(path=str(tmp_path)))
    assert tok2.get_vocab() == tok.get_vocab()
    batch = task.collate_fn(tok)([splits.eval["validation"][i] for i in range(3)])
    dense.eval()
    assert torch.equal(_logits(model.eval(), batch), _logits(dense, batch))


# ------------------------------------------------------------------ pretrained encoder-decoders
def test_hub_model_offline_without_cache_fails_before_loading():
    with pytest.raises(ConfigError, match=r"model='Helsinki-NLP/opus-mt-de-en': a model in the local Hugging Face cache"):
        get_task(task_cfg()).model_config(model_cfg("marian_de_en"))


def test_pretrained_bart_folder_loads_by_path_and_translates(tiny, tmp_path):
    """model=bart_base model.path=<folder>: the pretrained (not from-scratch) route, offline."""
    from transformers import BartConfig, BartForConditionalGeneration

    task, _, tok, splits = tiny
    config = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
                        eos_token_id=2, decoder_start_token_id=2)
    torch.manual_seed(0)
    BartForConditionalGeneration(config).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    cfg = model_cfg("bart_base", path=str(tmp_path))
    assert HeadSpace.from_config(task.model_config(cfg)).kinds() == {"encoder": 4, "decoder": 2, "cross": 2}
    model, tok2 = task.load_model(cfg)
    assert type(model).__name__ == "BartForConditionalGeneration"
    assert set(task.evaluate(model, tok2, splits, None, batch_size=4)) == {"bleu"}


def test_cli_prunes_a_pretrained_t5_folder_and_the_export_generates(tiny, tmp_path):
    """model=t5_small model.path=<folder> method=michel: T5's shared relative-position bias through
    scoring, surgery (the first blocks, which own the bias table, lose heads too), recovery and export."""
    import json
    import subprocess
    import sys

    from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

    _, _, tok, _ = tiny
    folder = tmp_path / "t5"
    config = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, num_heads=4, num_layers=2, num_decoder_layers=2,
                      d_ff=64, relative_attention_num_buckets=8, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, decoder_start_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    run_dir = tmp_path / "run"
    args = [
        "model=t5_small", f"model.path={folder}", "task=multi30k_de_en", f"task.data_dir={MULTI30K}",
        "method=michel", "heads=5", "pipeline=[prune,finetune,evaluate,export]", "task.max_train_samples=32",
        "task.max_eval_samples=4", "task.max_new_tokens=8", "task.num_beams=2", "trainer.max_steps=2",
        "trainer.progress_bar=false", "logger.mode=disabled", f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "prune_cli.cli", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["heads_total"] == 24 and metrics["heads_kept"] == 5 and "bleu" in metrics["eval"]
    heads = json.loads((run_dir / "heads.json").read_text())
    assert sum(map(sum, heads["mask"])) == 5
    model = load_pruned(run_dir / "model", auto_class=AutoModelForSeq2SeqLM)
    assert HeadSpace.from_model(model).total == 5 and count_params(model) == metrics["params"]
    batch = tok(["Ein Mann schläft.", "Zwei Hunde spielen im Schnee."], return_tensors="pt", padding=True)
    kw = {"num_beams": 2, "max_new_tokens": 6, "min_new_tokens": 6}
    assert torch.equal(model.generate(**batch, **kw), model.generate(**batch, **kw, use_cache=False))


# ------------------------------------------------------------------ the command line
def test_cli_from_scratch_random_pruning_end_to_end(tmp_path):
    """prune-run on 64 real Multi30k pairs: builds transformer_tiny and its tokenizer, trains it,
    prunes to 6 of 24 heads over all three attention kinds, recovers, scores BLEU, exports."""
    import json
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    args = [
        "model=transformer_tiny", "task=multi30k_de_en", f"task.data_dir={MULTI30K}", "method=random", "heads=6",
        "task.max_train_samples=64", "task.max_eval_samples=8", "task.max_new_tokens=16", "task.num_beams=2",
        "trainer.max_steps=3", "trainer.lr_scheduler=inverse_sqrt", "trainer.label_smoothing=0.1",
        "trainer.progress_bar=false", "logger.mode=disabled", f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "prune_cli.cli", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["primary_metric"] == "bleu" and 0.0 <= metrics["eval"]["bleu"] <= 100.0
    assert metrics["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert metrics["heads_total"] == 24 and metrics["heads_kept"] == 6
    # a from-scratch model is trained first (the scorer's default pipeline, finetune -> train)
    assert [s["stage"] for s in metrics["stages"]] == ["train", "prune", "finetune", "evaluate", "export"]

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = load_pruned(run_dir / "model", auto_class=AutoModelForSeq2SeqLM)
    assert HeadSpace.from_model(model).total == 6 and count_params(model) == metrics["params"]
    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    ids = model.generate(**tok(["Ein Mann schläft."], return_tensors="pt"), num_beams=2, max_new_tokens=5)
    assert ids.shape[0] == 1
