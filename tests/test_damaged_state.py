"""Damaged state and a full disk (issue 32, item 4): a checkpoint that is cut short or altered is
found before it is used, the run falls back to the one before it (or to the stage start) with one
warning line, and ends bit-identical to an uninterrupted run; a full disk is one line, keeps the
last good checkpoint, and the rerun resumes from it.

The pipeline runs are real: a tiny BERT (2 layers x 4 heads, hidden 32, dropout on) with
MiniLM's tokenizer on 16 RTE rows, method=random (finetune, prune, finetune, evaluate, export),
4 steps a stage with a checkpoint every 2."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from prune_cli import checkpoints
from prune_cli.checkpoints import Damaged, DiskFull
from prune_cli.pipeline import RUNNERS, Pipeline

ROOT = Path(__file__).resolve().parents[1]
RTE = ROOT.parent / "shared" / "data" / "glue" / "RTE"


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    import transformers as tf
    from conftest import minilm_path

    folder = tmp_path_factory.mktemp("tiny")
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm_path())
    torch.manual_seed(0)
    config = tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=37, max_position_embeddings=512)
    tf.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return ["model=minilm", f"model.path={folder}", "task=rte", f"task.data_dir={RTE}", "task.max_train_samples=16",
            "task.max_eval_samples=16", "trainer.max_steps=4", "trainer.save_every=2", "trainer.log_every=1",
            "trainer.batch_size=4", "trainer.progress_bar=false", "logger.mode=disabled", "method=random",
            "heads=4"]


def make_cfg(overrides):
    with initialize_config_module("prune_cli.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def crash(monkeypatch, method: str, at: int) -> None:
    """The stage `method` (or Pipeline.`method`) raises at stage `at` (a node dying there), before
    doing anything."""
    original = RUNNERS[method] if method in RUNNERS else getattr(Pipeline, method)

    def dying(self, state, index, *a, **k):
        if index == at:
            raise RuntimeError("node died")
        return original(self, state, index, *a, **k)

    if method in RUNNERS:
        monkeypatch.setitem(RUNNERS, method, dying)
    else:
        monkeypatch.setattr(Pipeline, method, dying)


def warnings_of(capfd) -> list[str]:
    return [line for line in capfd.readouterr().err.splitlines() if line.startswith("prune-run: warning:")]


def curves(run: Path) -> dict:
    """Every logged value by (step, key); a row logged twice must carry the same value."""
    out: dict = {}
    for line in (run / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        for key, value in row.items():
            if key != "step":
                assert out.setdefault((row["step"], key), value) == value, (row["step"], key)
    return out


def assert_same_run(a: Path, b: Path) -> None:
    """Same weights, same metrics (all but timings), same heads, same log curves."""
    from safetensors.torch import load_file

    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert ma["eval"] == mb["eval"] and ma["evals"] == mb["evals"]
    assert [(s["stage"], s.get("steps"), s.get("train_loss")) for s in ma["stages"]] == \
        [(s["stage"], s.get("steps"), s.get("train_loss")) for s in mb["stages"]]
    ha, hb = (json.loads((d / "heads.json").read_text()) for d in (a, b))
    assert ha["mask"] == hb["mask"]
    wa, wb = (load_file(d / "model" / "model.safetensors") for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert curves(a) == curves(b)
    assert not (b / "checkpoints").exists()


@pytest.fixture(scope="module")
def whole(tmp_path_factory, overrides) -> Path:
    run = tmp_path_factory.mktemp("whole")
    Pipeline(make_cfg(overrides), run).run()
    return run


@pytest.fixture(scope="module")
def committed(tmp_path_factory, overrides) -> Path:
    """A run that died in `evaluate` (stage 3): stages 0-2 committed, progress.json naming
    model-2, progress.prev.json stage 1 and model-1."""
    run = tmp_path_factory.mktemp("committed")
    with pytest.MonkeyPatch.context() as mp:
        crash(mp, "evaluate", 3)
        with pytest.raises(RuntimeError, match="node died"):
            Pipeline(make_cfg(overrides), run).run()
    ckpt = run / "checkpoints"
    assert json.loads((ckpt / "progress.json").read_text())["done"] == 2
    assert json.loads((ckpt / "progress.prev.json").read_text())["done"] == 1
    assert sorted(p.name for p in ckpt.glob("model-*")) == ["model-1", "model-2"]
    assert not list(ckpt.glob("train-*"))
    return run


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow
def test_truncated_step_checkpoint_resumes_from_the_one_before(whole, overrides, tmp_path, monkeypatch, capfd):
    """Killed after the second fine-tune's last step, before its commit: train-2.pt (step 4) and
    train-2.prev.pt (step 2). train-2.pt cut in half: one warning naming it, the stage resumes
    at step 2 and the run ends as if never interrupted."""
    cut = tmp_path / "cut"
    crash(monkeypatch, "_checkpoint", 2)
    with pytest.raises(RuntimeError, match="node died"):
        Pipeline(make_cfg(overrides), cut).run()
    monkeypatch.undo()
    latest = cut / "checkpoints" / "train-2.pt"
    assert torch.load(checkpoints.previous(latest), weights_only=False)["step"] == 2
    truncate(latest)
    capfd.readouterr()
    Pipeline(make_cfg(overrides), cut).run()
    lines = warnings_of(capfd)
    assert len(lines) == 1 and str(latest) in lines[0] and "at step 2/4 from" in lines[0], lines
    assert lines[0].endswith("train-2.prev.pt instead"), lines
    assert_same_run(whole, cut)


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["progress.json", "model-2/model.safetensors"])
def test_damaged_commit_redoes_the_lost_stage(whole, committed, overrides, tmp_path, capfd, damage):
    """progress.json cut in half, or 64 bytes inside model-2's weights altered (same size): one
    warning naming that file, the run goes back to the commit before (stage 1), fine-tunes
    stage 2 again and ends identical to the uninterrupted run."""
    run = tmp_path / "run"
    shutil.copytree(committed, run)
    target = run / "checkpoints" / damage
    if damage == "progress.json":
        truncate(target)
    else:
        with open(target, "r+b") as f:
            f.seek(target.stat().st_size // 2)
            block = f.read(64)
            f.seek(-64, os.SEEK_CUR)
            f.write(bytes(b ^ 0xFF for b in block))
    capfd.readouterr()
    metrics = Pipeline(make_cfg(overrides), run).run()
    lines = warnings_of(capfd)
    assert len(lines) == 1 and str(target) in lines[0] and "progress.prev.json, after stage 1" in lines[0], lines
    assert metrics["stages"][2]["stage"] == "finetune" and metrics["stages"][2]["steps"] == 4
    assert_same_run(whole, run)


DISK_FULL = textwrap.dedent('''
    """prune-run itself, with the disk full at the Nth checkpoint save: the write gets 4 KiB of
    room, then ENOSPC from the file, as torch.save meets it on a real full disk."""
    import errno, os, sys
    import torch

    full_at, args = int(sys.argv[1]), sys.argv[2:]
    real, calls = torch.save, [0]

    class Full:
        def __init__(self, f):
            self.f, self.room = f, 4096

        def write(self, data):
            if len(data) > self.room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.room -= len(data)
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    def save(obj, f, *a, **k):
        calls[0] += 1
        return real(obj, Full(f) if calls[0] == full_at else f, *a, **k)

    torch.save = save
    from prune_cli.cli import main

    sys.argv = ["prune-run", *args]
    main()
''')


@pytest.mark.slow
def test_full_disk_is_one_line_keeps_the_last_checkpoint_and_resumes(whole, overrides, tmp_path):
    """The disk fills while the first fine-tune saves step 4 (the second torch.save): prune-run
    exits 1 with one line naming the file and the checkpoint kept (step 2, still whole, no
    temporary file left); once space is freed the same command resumes from it and the run
    ends identical to the uninterrupted one."""
    script = tmp_path / "full.py"
    script.write_text(DISK_FULL)
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    res = subprocess.run([sys.executable, str(script), "2", *overrides, f"hydra.run.dir={run}"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    kept = run / "checkpoints" / "train-0.pt"
    want = (f"prune-run: error: no space left on device writing {kept} (the last good checkpoint {kept} is kept; "
            "free space and rerun to resume)")
    assert res.returncode == 1, res.stderr[-3000:]
    lines = [line for line in res.stderr.splitlines() if line.startswith("prune-run: error")]  # (and stage headers)
    assert lines == [want] and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.rstrip().endswith(want)
    checkpoints.check(kept)
    assert torch.load(kept, weights_only=False)["step"] == 2
    assert sorted(p.name for p in kept.parent.glob("train-*")) == ["train-0.pt", "train-0.pt.sha256"]

    Pipeline(make_cfg(overrides), run).run()  # space freed: the same settings again
    assert_same_run(whole, run)


# ---------------------------------------------------------------------------- the helper itself, fast
def test_full_disk_in_any_writer_keeps_the_old_file_and_names_the_last_checkpoint(tmp_path):
    """Outputs and model folders too: a write_json, or safetensors' own error text, on a full disk
    is DiskFull naming the newest checkpoint of the run; the old file and folder stay whole."""
    from prune_cli import report

    ckpt = tmp_path / "checkpoints"
    report.write_json(ckpt / "progress.json", {"done": 0}, checksum=True, keep_previous=True)
    report.write_json(tmp_path / "metrics.json", {"a": 1})

    def full(f):
        f.write(b"{")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFull) as err:
        checkpoints.atomic_write(tmp_path / "metrics.json", full)
    assert err.value.code == (f"prune-run: error: no space left on device writing {tmp_path / 'metrics.json'} "
                              f"(the last good checkpoint {ckpt / 'progress.json'} is kept; free space and rerun "
                              "to resume)")
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "metrics.json"]

    checkpoints.write_folder(ckpt / "model-0", lambda d: (d.mkdir(), (d / "config.json").write_text("{}")))

    def rust_full(folder):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 10)
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(DiskFull) as err:
        checkpoints.write_folder(ckpt / "model-0", rust_full)
    assert str(ckpt / "model-0") in err.value.code and not (ckpt / "model-0.tmp").exists()
    checkpoints.check_folder(ckpt / "model-0")
    with pytest.raises(RuntimeError, match="unrelated"):  # other errors pass through unchanged
        checkpoints.atomic_write(tmp_path / "x.json", lambda f: (_ for _ in ()).throw(RuntimeError("unrelated")))


def test_generations_checksums_and_files_without_one(tmp_path, capfd):
    """The latest of two generations is used; cut short it is deleted and the previous one used
    (one warning); both damaged: None and one warning; a file with no checksum (an older run,
    or a crash between the renames) is used if it parses."""
    path = tmp_path / "progress.json"
    for done in (0, 1):
        checkpoints.atomic_write(path, json.dumps({"done": done}), checksum=True, keep_previous=True)
    load = lambda p: json.loads(p.read_text())
    capfd.readouterr()
    assert checkpoints.load_newest(path, load, fallback="start") == {"done": 1}
    assert warnings_of(capfd) == []
    path.write_text('{"done": 7}')  # altered, still valid JSON: only the checksum sees it
    assert checkpoints.load_newest(path, load, fallback="start") == {"done": 0}
    lines = warnings_of(capfd)
    assert len(lines) == 1 and "checksum mismatch" in lines[0], lines
    assert not path.exists() and not checkpoints.sidecar(path).exists()
    checkpoints.previous(path).write_text('{"do')
    assert checkpoints.load_newest(path, load, fallback="the run starts again") is None
    lines = warnings_of(capfd)
    assert len(lines) == 1 and "the run starts again instead" in lines[0], lines
    path.write_text('{"done": 3}')  # no checksum beside it
    assert checkpoints.load_newest(path, load, fallback="start") == {"done": 3}
    path.write_text('{"done": ')
    assert checkpoints.load_newest(path, load, fallback="start") is None
    lines = warnings_of(capfd)
    assert len(lines) == 1 and "unreadable" in lines[0], lines
    with pytest.raises(Damaged, match="missing"):
        checkpoints.check(path)


def test_meta_training_resumes_exactly_past_a_damaged_checkpoint(tmp_path, tokenizer, capfd):
    """SMP's meta-training checkpoint: two steps saved every step, the latest cut short; the
    rerun goes back to step 1 and ends equal to three steps in one go."""
    from conftest import tiny_model
    from test_smp import _meta_cfg, _tiny_tasks

    from prune_cli.methods.smp import read_pruner
    from prune_cli.methods.smp.meta_train import meta_train

    def run(steps, ckpt, out):
        meta_train(model=tiny_model("bert", attn="sdpa"), tokenizer=tokenizer, tasks=_tiny_tasks(),
                   cfg=_meta_cfg(meta_steps=steps), out=out, seed=3, device="cpu", checkpoint=ckpt, save_every=1,
                   progress_bar=False)
        return read_pruner(out)

    whole = run(3, tmp_path / "a.pt", tmp_path / "a" / "pruner.pt")
    ckpt = tmp_path / "b.pt"
    run(2, ckpt, tmp_path / "b" / "pruner.pt")
    truncate(ckpt)
    capfd.readouterr()
    resumed = run(3, ckpt, tmp_path / "b" / "pruner.pt")
    lines = warnings_of(capfd)
    assert len(lines) == 1 and str(ckpt) in lines[0] and "at step 1 from" in lines[0], lines
    assert resumed["steps"] == whole["steps"] == 3
    assert all(torch.equal(v, resumed["state_dict"][k]) for k, v in whole["state_dict"].items())
