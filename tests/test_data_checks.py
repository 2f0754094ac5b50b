"""Data and model files that are wrong are refused before training, with one line naming the key the
user typed, the file and the row (issue 32, item 5): a SQuAD answer whose offset does not point at
its text, a teacher fine-tuned for another task (or not at all), a byte-order mark, bytes that are
not UTF-8, a config.json declaring more layers than its weights, an unreadable weights file.

The faults are planted at random rows (seeded per test) of copies of the real data, so the checks
are exercised on rows nobody picked by hand."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
from conftest import minilm_path
from hydra import compose, initialize_config_module

from prune_cli.errors import ConfigError, DataError
from prune_cli.tasks import get_task
from prune_cli.validate import validate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RTE = DATA / "glue" / "RTE"


def compose_cfg(*overrides):
    with initialize_config_module("prune_cli.conf", version_base="1.3"):
        return compose("config", overrides=["model=minilm", *overrides])


def task_of(*overrides):
    cfg = compose_cfg(*overrides)
    return get_task(cfg.task, seed=1)


# ---------------------------------------------------------------------- SQuAD offsets
def squad_copy(tmp_path: Path, articles: int = 3) -> tuple[Path, dict]:
    data = json.loads((DATA / "squad" / "v1.1" / "dev-v1.1.json").read_text())
    data["data"] = data["data"][:articles]
    folder = tmp_path / "squad"
    folder.mkdir()
    return folder, data


def questions(data: dict) -> list[dict]:
    return [qa for a in data["data"] for p in a["paragraphs"] for qa in p["qas"]]


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("fault", ["shifted", "past_the_context", "negative"])
def test_squad_answer_not_at_its_offset_names_the_file_and_the_question(tmp_path, seed, fault):
    folder, data = squad_copy(tmp_path)
    rng = random.Random(seed)
    qas = questions(data)
    number = rng.randrange(len(qas))
    answer = qas[number]["answers"][0]
    answer["answer_start"] = {"shifted": answer["answer_start"] + rng.randint(1, 5),
                              "past_the_context": 10**6, "negative": -1}[fault]
    for name in ("train.json", "dev.json"):
        (folder / name).write_text(json.dumps(data))
    task = task_of("task=squad", f"task.data_dir={folder}", "task.train_file=train.json", "task.eval_file=dev.json")
    with pytest.raises(DataError) as err:
        task.validate()
    message = str(err.value)
    assert message.startswith("task.data_dir=") and "train.json" in message
    assert f"question {number + 1} (id {qas[number]['id']})" in message
    assert repr(answer["text"]) in message and "\n" not in message


def test_the_official_squad_dev_file_passes_the_offset_check():
    from prune_cli.tasks.squad import read_squad_json

    rows = read_squad_json(DATA / "squad" / "v1.1" / "dev-v1.1.json")  # 10,570 questions, every offset right
    assert len(rows) == 10570


# ---------------------------------------------------------------------- encodings, byte-order marks
@pytest.mark.parametrize("seed", [1, 2])
def test_a_non_utf8_byte_in_a_late_glue_row_is_refused_at_validation_with_its_line(tmp_path, seed):
    folder = tmp_path / "RTE"
    shutil.copytree(RTE, folder)
    lines = (folder / "train.tsv").read_bytes().split(b"\n")
    line = random.Random(seed).randrange(100, len(lines) - 2)  # beyond the rows validation peeks at
    lines[line] = lines[line].replace(b" ", b" caf\xe9 ", 1)  # latin-1
    (folder / "train.tsv").write_bytes(b"\n".join(lines))
    task = task_of("task=rte", f"task.data_dir={folder}")
    with pytest.raises(DataError) as err:
        task.validate()
    assert f"train.tsv, line {line + 1}: UTF-8 text" in str(err.value)
    assert str(err.value).startswith("task.data_dir=")


def test_a_bad_label_in_a_late_glue_row_is_refused_at_validation_with_its_line(tmp_path):
    folder = tmp_path / "RTE"
    shutil.copytree(RTE, folder)
    lines = (folder / "dev.tsv").read_text().split("\n")
    lines[200] = lines[200].rsplit("\t", 1)[0] + "\tmaybe"
    (folder / "dev.tsv").write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"dev.tsv, line 201: a GLUE rte row: it has label 'maybe'"):
        task_of("task=rte", f"task.data_dir={folder}").validate()


def test_a_byte_order_mark_does_not_become_part_of_a_token(tmp_path):
    from prune_cli.tasks.conll import read_conll
    from prune_cli.tasks.translation import read_lines

    conll = tmp_path / "train.txt"
    conll.write_bytes(b"\xef\xbb\xbfEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n")
    assert read_conll(conll)[0]["tokens"] == ["EU", "rejects"]
    src = tmp_path / "train.de"
    src.write_bytes(b"\xef\xbb\xbfEin Satz.\nNoch einer.\n")
    assert read_lines(src) == ["Ein Satz.", "Noch einer."]
    folder = tmp_path / "RTE"
    shutil.copytree(RTE, folder)
    (folder / "train.tsv").write_bytes(b"\xef\xbb\xbf" + (RTE / "train.tsv").read_bytes())
    task = task_of("task=rte", f"task.data_dir={folder}", "task.subsample=first", "task.max_train_samples=3")
    task.validate()
    columns, _ = task.examples("train")
    assert not any(text.startswith("\ufeff") for col in columns for text in col)


@pytest.mark.parametrize("reader", ["conll", "translation", "squad"])
def test_non_utf8_bytes_in_other_families_name_the_file_and_line(tmp_path, reader):
    from prune_cli.tasks.conll import read_conll
    from prune_cli.tasks.squad import read_squad_json
    from prune_cli.tasks.translation import read_lines

    path = tmp_path / "data.txt"
    path.write_bytes(b"line one\nline two\nM\xfcnchen B-LOC\n")
    read = {"conll": read_conll, "translation": read_lines, "squad": read_squad_json}[reader]
    with pytest.raises(DataError, match=r"data.txt, line 3: UTF-8 text"):
        read(path)


# ---------------------------------------------------------------------- teachers
def fine_tuned_config(tmp_path: Path, **changes) -> Path:
    """A model folder whose config.json says what a fine-tuned checkpoint's would (the weights are
    not read: validation decides from the config)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(minilm_path())
    for key, value in changes.items():
        setattr(config, key, value)
    folder = tmp_path / "teacher"
    config.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", ["other_labels", "other_head", "no_head"])
def test_a_teacher_fine_tuned_for_another_task_is_refused_before_anything_loads(tmp_path, case):
    changes = {
        "other_labels": {"architectures": ["BertForSequenceClassification"],
                         "id2label": {0: "entailment", 1: "neutral", 2: "contradiction"}},
        "other_head": {"architectures": ["BertForTokenClassification"]},
        "no_head": {"architectures": ["BertModel"]},
    }[case]
    teacher = fine_tuned_config(tmp_path, **changes)
    cfg = compose_cfg("task=rte", f"task.data_dir={RTE}", "method=grain", "density=0.5", f"distill.teacher={teacher}")
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(f"distill.teacher='{teacher}': a teacher fine-tuned for rte")


def test_a_teacher_fine_tuned_for_the_task_passes(tmp_path):
    teacher = fine_tuned_config(tmp_path, architectures=["BertForSequenceClassification"],
                                id2label={0: "entailment", 1: "not_entailment"})
    validate(compose_cfg("task=rte", f"task.data_dir={RTE}", "method=grain", "density=0.5",
                         f"distill.teacher={teacher}"))


# ---------------------------------------------------------------------- model folders
def minilm_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(minilm_path(), folder)
    return folder


def test_a_config_declaring_more_layers_than_the_weights_is_refused(tmp_path):
    folder = minilm_copy(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["num_hidden_layers"] += 2
    (folder / "config.json").write_text(json.dumps(config))
    task = task_of("task=rte", f"task.data_dir={RTE}", f"model.path={folder}")
    with pytest.raises(DataError) as err:
        task.load_model(compose_cfg(f"model.path={folder}").model)
    message = str(err.value)
    assert message.startswith("model.path=") and "not in the checkpoint" in message
    assert "encoder.layer.6." in message or "encoder.layer.7." in message


def test_a_truncated_weights_file_is_one_line_naming_the_folder(tmp_path):
    folder = minilm_copy(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])
    task = task_of("task=rte", f"task.data_dir={RTE}", f"model.path={folder}")
    with pytest.raises(DataError, match=r"^model.path=.*: a readable model folder"):
        task.load_model(compose_cfg(f"model.path={folder}").model)
