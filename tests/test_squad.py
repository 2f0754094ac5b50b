"""SQuAD task family: official EM/F1, logits -> answer text, sliding windows, article split, evaluate()."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import load_task_cfg

from prune_cli.errors import ConfigError
from prune_cli.tasks import get_task
from prune_cli.tasks.squad import (
    SquadTask,
    exact_match,
    f1_score,
    normalize_answer,
    postprocess,
    read_squad_json,
    split_by_article,
    squad_metrics,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONF = Path(__file__).resolve().parents[1] / "conf"
SQUAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "v1.1"


def task_cfg(name: str = "squad", **overrides):
    return load_task_cfg(name, SQUAD, **{"split_dev_for_train": 0.8, **overrides})


def tiny_qa_model():
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    return BertForQuestionAnswering(config)


def one(context: str, answers: list[str], qid: str = "q", starts: list[int] | None = None) -> dict:
    starts = starts if starts is not None else [max(context.find(a), 0) for a in answers]
    return {
        "id": qid,
        "title": "t",
        "question": "?",
        "context": context,
        "answers": {"text": answers, "answer_start": starts},
    }


# ------------------------------------------------------------------ official metric
def test_normalisation_drops_case_punctuation_articles_and_extra_space():
    assert normalize_answer("The  Quick, brown fox!") == "quick brown fox"
    assert normalize_answer("an Apple a day") == "apple day"
    assert normalize_answer("theory") == "theory"  # articles only as whole words
    assert exact_match("Denver Broncos.", "the denver broncos") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0


def test_token_f1_by_hand():
    # pred {cat, sat, on, mat} vs gold {cat, on, mat}: P = 3/4, R = 1 -> F1 = 6/7
    assert f1_score("the cat sat on the mat", "a cat on a mat") == pytest.approx(6 / 7)
    # tokens count with multiplicity: "x x y" vs "x y y" share one x and one y -> P = R = 2/3
    assert f1_score("x x y", "x y y") == pytest.approx(2 / 3)
    assert f1_score("nothing shared", "other words") == 0.0
    # the two official scripts differ only on empty normalised strings
    assert f1_score("", "the") == 0.0
    assert f1_score("", "the", version_2=True) == 1.0
    assert f1_score("an", "cat", version_2=True) == 0.0


def test_squad_metrics_take_the_best_gold_answer_and_count_missing_predictions():
    examples = [
        one("The Denver Broncos won.", ["Denver Broncos", "The Denver Broncos"], "a"),
        one("The Carolina Panthers lost.", ["Carolina Panthers"], "b"),
        one("Nobody answered this one.", ["Nobody"], "c"),
    ]
    preds = {"a": "denver broncos!", "b": "Panthers team"}  # "c" missing -> 0
    # a: EM 1, F1 1; b: EM 0, F1 = P 1/2, R 1/2 -> 1/2; c: 0, 0
    m = squad_metrics(preds, examples)
    assert m["exact_match"] == pytest.approx(100 / 3)
    assert m["f1"] == pytest.approx(100 * 1.5 / 3)
    assert set(m) == {"exact_match", "f1"}


def test_squad_v2_no_answer_scoring_and_breakdown():
    examples = [
        one("Paris is in France.", ["Paris"], "has1"),
        one("Paris is in France.", ["France"], "has2"),
        one("Paris is in France.", [], "no1"),
        one("Paris is in France.", [], "no2"),
    ]
    preds = {"has1": "Paris", "has2": "", "no1": "", "no2": "France"}
    m = squad_metrics(preds, examples, version_2=True)
    assert m["has_ans_exact_match"] == 50.0 and m["has_ans_f1"] == 50.0
    assert m["no_ans_exact_match"] == 50.0 and m["no_ans_f1"] == 50.0
    assert m["exact_match"] == 50.0 and m["f1"] == 50.0
    # an unanswerable question alone: the empty prediction is exactly right
    assert squad_metrics({"no1": ""}, [examples[2]], version_2=True)["f1"] == 100.0



@pytest.mark.parametrize("version_2", [False, True])
def test_per_question_predictions_score_as_the_whole_split(version_2):
    """predictions.json keeps (answer text or None, gold answers) per question: the task's
    metric_on over them, or over a resample repeating questions, equals squad_metrics."""
    examples = [one("Paris is in France.", ["Paris"], "has1"), one("Paris is in France.", ["France", "in France"], "has2"),
                one("Paris is in France.", [] if version_2 else ["in"], "no1"), one("Paris is in France.", ["Paris"], "gone")]
    preds = {"has1": "Paris", "has2": "France is", "no1": ""}
    task = get_task(task_cfg("squad_v2" if version_2 else "squad"))
    assert task.version_2 == version_2
    kept = [preds.get(ex["id"]) for ex in examples], [list(ex["answers"]["text"]) for ex in examples]
    ref = squad_metrics(preds, examples, version_2=version_2)
    assert task.metric_on(*kept) == {"exact_match": ref["exact_match"], "f1": ref["f1"]}
    idx = [0, 0, 1, 3]
    again = squad_metrics(preds, [examples[i] for i in idx], version_2=version_2)
    assert task.metric_on([kept[0][i] for i in idx], [kept[1][i] for i in idx])["f1"] == again["f1"]


# ------------------------------------------------------------------ post-processing
CONTEXT = "Denver Broncos won Super Bowl 50."
#           0     6       15  19    25   30 32


def crafted_feature():
    """[CLS] q q [SEP] Denver Broncos won Super Bowl 50 . [SEP] with the context's char offsets."""
    offsets = [
        None,
        None,
        None,
        None,
        (0, 6),
        (7, 14),
        (15, 18),
        (19, 24),
        (25, 29),
        (30, 32),
        (32, 33),
        None,
    ]
    return offsets


def logits_with(peaks: dict[int, float], n: int = 12) -> np.ndarray:
    x = np.zeros(n, dtype=np.float32)
    for i, v in peaks.items():
        x[i] = v
    return x


def test_postprocess_picks_best_valid_span_and_skips_question_tokens():
    ex = [{"id": "q", "context": CONTEXT}]
    offs = crafted_feature()
    # the highest start logit sits on a question token (2): must be ignored
    start = logits_with({2: 9.0, 4: 5.0, 7: 3.0})
    end = logits_with({2: 9.0, 5: 4.0, 9: 1.0})
    assert postprocess(ex, [0], [offs], [start], [end]) == {"q": "Denver Broncos"}
    # end before start is invalid: best start 7 (Super) with end 5 is skipped -> Super..50
    start = logits_with({7: 5.0})
    end = logits_with({5: 6.0, 9: 2.0})
    assert postprocess(ex, [0], [offs], [start], [end]) == {"q": "Super Bowl 50"}
    # Super..50 is 3 tokens: too long for max_answer_length=2, so the best 2-token span wins
    start, end = logits_with({7: 5.0}), logits_with({9: 2.0, 8: 1.0})
    assert postprocess(ex, [0], [offs], [start], [end], max_answer_length=2) == {"q": "Super Bowl"}


def test_postprocess_combines_features_and_applies_v2_null_threshold():
    ex = [{"id": "q", "context": CONTEXT}]
    offs = crafted_feature()
    weak = (logits_with({4: 1.0}), logits_with({5: 1.0}))  # Denver Broncos, score 2
    strong = (logits_with({7: 3.0}), logits_with({8: 3.0}))  # Super Bowl, score 6
    got = postprocess(ex, [0, 0], [offs, offs], [weak[0], strong[0]], [weak[1], strong[1]])
    assert got == {"q": "Super Bowl"}
    # null score = start[CLS] + end[CLS] = 8 (lowest over the features), best span 6: diff 2
    null = (logits_with({0: 4.0, 7: 3.0}), logits_with({0: 4.0, 8: 3.0}))
    args = (ex, [0], [offs], [null[0]], [null[1]])
    assert postprocess(*args, version_2=True) == {"q": ""}
    assert postprocess(*args, version_2=True, null_score_diff_threshold=2.5) == {"q": "Super Bowl"}
    assert postprocess(*args, version_2=False) == {"q": "Super Bowl"}


# ------------------------------------------------------------------ real data and windows
def test_reads_real_dev_file_and_splits_by_article():
    rows = read_squad_json(SQUAD / "dev-v1.1.json")
    assert len(rows) == 10570 and len({r["title"] for r in rows}) == 48
    assert rows[0]["answers"]["text"][0] == "Denver Broncos"
    train, held = split_by_article(rows, 0.8, seed=0)
    assert len(train) + len(held) == len(rows)
    assert not {r["title"] for r in train} & {r["title"] for r in held}
    assert 0.75 < len(train) / len(rows) < 0.9
    again, _ = split_by_article(rows, 0.8, seed=0)
    other, _ = split_by_article(rows, 0.8, seed=1)
    assert [r["id"] for r in again] == [r["id"] for r in train]
    assert {r["title"] for r in other} != {r["title"] for r in train}


def test_task_split_caps_and_never_shares_a_title():
    task = get_task(task_cfg(max_train_samples=30, max_eval_samples=12))
    assert isinstance(task, SquadTask) and task.primary_metric == "f1"
    task.validate()
    full_train, full_eval = task._raw("train"), task._raw("validation")
    assert not {r["title"] for r in full_train} & {r["title"] for r in full_eval}
    assert len(task.rows("train")) == 30 and len(task.rows("validation")) == 12


def test_sliding_window_positions_point_at_the_answer_or_cls(tokenizer):
    task = get_task(task_cfg(max_length=96, doc_stride=32))
    rows = task.rows("train")[:24]
    train = task.encode_train(tokenizer, rows)
    features, raw = task.encode_eval(tokenizer, rows)
    assert len(train) == len(features) > len(rows)  # long contexts became several windows
    assert max(len(ids) for ids in train["input_ids"]) <= 96
    assert "offset_mapping" not in features.column_names and "start_positions" not in features.column_names
    inside = 0
    for f, row in enumerate(train):
        s, e = row["start_positions"], row["end_positions"]
        if s == 0:
            assert e == 0
            continue
        inside += 1
        answers = rows[raw["feature_example"][f]]["answers"]
        first = answers["answer_start"][0]
        last = first + len(answers["text"][0])
        offs = raw["offsets"][f]
        # the smallest token span covering the answer's characters (a token may overhang: "golden")
        assert offs[s][0] <= first < offs[s][1] and offs[e][0] < last <= offs[e][1] and s <= e
        context = rows[raw["feature_example"][f]]["context"]
        assert answers["text"][0] in context[offs[s][0] : offs[e][1]]
    assert inside >= len(rows)  # every answer lies in at least one window


def test_gold_logits_round_trip_to_exact_answers(tokenizer):
    """Logits peaked at the training targets must decode back to the gold text: the windows, the
    offsets and the post-processing agree with each other."""
    task = get_task(task_cfg(max_length=128, doc_stride=48))
    rows = task.rows("validation")[:30]
    train = task.encode_train(tokenizer, rows)
    _, raw = task.encode_eval(tokenizer, rows)
    starts, ends = [], []
    for row in train:
        n = len(row["input_ids"])
        s, e = row["start_positions"], row["end_positions"]
        starts.append(logits_with({s: 10.0} if s else {}, n))
        ends.append(logits_with({e: 10.0} if e else {}, n))
    preds = postprocess(
        raw["examples"], raw["feature_example"], raw["offsets"], starts, ends, cls_index=raw["cls_index"]
    )
    assert squad_metrics(preds, rows)["exact_match"] == 100.0


def test_evaluate_tiny_bert_and_training_loss(tokenizer):
    from accelerate import Accelerator

    task = get_task(task_cfg(max_train_samples=8, max_eval_samples=10, max_length=128, doc_stride=32))
    task.validate()
    splits = task.splits(tokenizer)
    model = tiny_qa_model()
    batch = task.collate_fn(tokenizer)([splits.train[i] for i in range(4)])
    assert set(batch) >= {"input_ids", "attention_mask", "start_positions", "end_positions"}
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.ndim == 0
    model.train()
    m1 = task.evaluate(model, tokenizer, splits, Accelerator(cpu=True), batch_size=4)
    m2 = task.evaluate(model, tokenizer, splits, None, batch_size=7)  # other batching, same answers
    assert set(m1) == {"exact_match", "f1"} and all(isinstance(v, float) for v in m1.values())
    assert 0.0 <= m1["exact_match"] <= m1["f1"] <= 100.0
    assert m1 == pytest.approx(m2)
    assert model.training  # evaluate() restores the mode it found


# ------------------------------------------------------------------ v2 files and validation
def write_v2(folder: Path, name: str) -> Path:
    data = {
        "version": "v2.0",
        "data": [
            {
                "title": "Paris",
                "paragraphs": [
                    {
                        "context": "Paris is the capital of France.",
                        "qas": [
                            {
                                "id": "a",
                                "question": "Capital of France?",
                                "is_impossible": False,
                                "answers": [{"text": "Paris", "answer_start": 0}],
                            },
                            {
                                "id": "b",
                                "question": "Capital of Mars?",
                                "is_impossible": True,
                                "answers": [],
                                "plausible_answers": [{"text": "Paris", "answer_start": 0}],
                            },
                        ],
                    }
                ],
            }
        ],
    }
    path = folder / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_v2_local_files_mark_unanswerable_questions_with_cls(tmp_path, tokenizer):
    write_v2(tmp_path, "train-v2.0.json")
    write_v2(tmp_path, "dev-v2.0.json")
    task = get_task(task_cfg("squad_v2", data_dir=str(tmp_path), split_dev_for_train=None))
    task.validate()
    assert task.version_2
    rows = task.rows("train")
    assert rows[1]["answers"]["text"] == []
    train = task.encode_train(tokenizer, rows)
    assert train["start_positions"][1] == 0 and train["end_positions"][1] == 0
    assert train["start_positions"][0] > 0


def test_direct_file_paths_without_folder_or_hub(tmp_path):
    dev = write_v2(tmp_path, "my-dev.json")
    task = get_task(
        task_cfg(
            "squad_v2",
            data_dir=None,
            hub=None,
            eval_file=str(dev),
            train_file=str(dev),
            split_dev_for_train=None,
        )
    )
    task.validate()
    assert [r["id"] for r in task.rows("validation")] == ["a", "b"]


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"data_dir": "/nonexistent/squad"}, "task.data_dir"),
        ({"split_dev_for_train": None}, "task.train_file"),  # dev-only folder, no split asked
        ({"split_dev_for_train": 1.0}, "task.split_dev_for_train"),
        ({"split_dev_for_train": 0}, "task.split_dev_for_train"),
        ({"eval_file": "missing.json"}, "task.eval_file"),
        ({"doc_stride": 384}, "task.doc_stride"),
        ({"max_length": 0}, "task.max_length"),
        ({"split_seed": "abc"}, "task.split_seed"),
        ({"null_score_diff_threshold": "high"}, "task.null_score_diff_threshold"),
        ({"data_dir": None, "hub": "rajpurkar/not-cached-here"}, "task.hub"),
    ],
)
def test_validate_rejects_bad_config(overrides, key):
    with pytest.raises(ConfigError) as err:
        get_task(task_cfg(**overrides)).validate()
    assert err.value.key == key


def test_validate_rejects_malformed_json(tmp_path):
    (tmp_path / "dev-v1.1.json").write_text('{"data": [{"title": "x", "paragraphs": [{"qas": []}]}]}')
    with pytest.raises(ConfigError, match="official layout"):
        get_task(task_cfg(data_dir=str(tmp_path))).validate()
    (tmp_path / "dev-v1.1.json").write_text("not json")
    with pytest.raises(ConfigError, match="official layout"):
        get_task(task_cfg(data_dir=str(tmp_path))).validate()


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_prune_run_squad_split_dev_end_to_end(tmp_path):
    """The real command: MiniLM on 16 real questions of the dev articles kept for training, random
    pruning to 36 heads, 2 fine-tuning steps, scored on 8 questions of the held-out articles."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    args = [
        "model=minilm", "task=squad", f"task.data_dir={SQUAD}", "task.split_dev_for_train=0.8",
        "task.max_length=128", "task.doc_stride=32", "method=random", "heads=36",
        "pipeline=[prune,finetune,evaluate]", "task.max_train_samples=16", "task.max_eval_samples=8",
        "trainer.max_steps=2", "trainer.batch_size=8", "trainer.progress_bar=false", "logger.mode=disabled",
        "export_model=false", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    res = subprocess.run([sys.executable, "-m", "prune_cli.cli", *args], check=False, cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["task"] == "squad" and metrics["primary_metric"] == "f1" and metrics["heads_kept"] == 36
    assert set(metrics["eval"]) == {"exact_match", "f1"}
    assert 0.0 <= metrics["eval"]["exact_match"] <= metrics["eval"]["f1"] <= 100.0
    kept = json.loads((run_dir / "predictions.json").read_text())["splits"]["validation"]
    assert len(kept["prediction"]) == len(kept["label"]) == 8


def test_dev_only_folder_without_split_fails_fast_through_the_cli(tmp_path):
    """Through the real command: one clear line and exit status 2."""
    import subprocess
    import sys

    args = ["model=minilm", "task=squad", f"task.data_dir={SQUAD}", "logger.mode=disabled",
            f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    res = subprocess.run([sys.executable, "-m", "prune_cli.cli", *args], check=False, cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert "task.train_file" in res.stderr and "split_dev_for_train" in res.stderr
