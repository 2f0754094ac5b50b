"""Shipping a run's model (prune_cli/shipping.py): the model card, the ONNX graph and the push to
the Hub, through the real `prune-run` and a real huggingface_hub client talking to a local
stand-in for the Hub (the HTTP endpoints create_repo and create_commit call, in this process)."""

from __future__ import annotations

import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import TINY, prune_run
from test_validate import cfg

from prune_cli.errors import ConfigError
from prune_cli.validate import validate

REPO = "me/tiny-pruned"
# random scores, no training: the shipping is what is tested, the run only has to be real
RUN = [*TINY, "method=random", "heads=36", "pipeline=[prune,evaluate,export]", "logger.mode=disabled"]


class StandInHub:
    """The Hub as huggingface_hub 2.x's create_repo / create_commit see it: repos in memory,
    every file answered `regular` at preupload (its bytes then come base64 in the commit's NDJSON).
    A request it does not know is logged in `unexpected` and answered 404, so a client that
    starts calling something else fails with the path named."""

    #: what the client asks on the side and does without: huggingface_hub's registry of AI agents
    #: for its user-agent header (a 404 is not cached, so the user's HF cache is left alone)
    TOLERATED = frozenset({"/api/agent-harnesses"})

    def __init__(self):
        self.repos: dict[str, dict] = {}  # repo id -> {"private": bool, "files": {path: bytes}, "commits": [...]}
        self.unexpected: list[str] = []
        self.fail_commits: dict[str, int] = {}  # repo id -> commits still to refuse with a 500
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet: failures show `unexpected` instead
                pass

            def do_POST(self):
                hub.post(self)

            def do_GET(self):
                hub.refuse(self)

            do_HEAD = do_PUT = do_DELETE = do_GET

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def env(self) -> dict:
        return {"HF_ENDPOINT": self.url, "HF_TOKEN": "hf_dummy", "HF_HUB_OFFLINE": "0", "NO_PROXY": "127.0.0.1",
                "no_proxy": "127.0.0.1"}

    @staticmethod
    def body(req) -> bytes:
        if req.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(req.rfile.readline().split(b";")[0], 16)
                data += req.rfile.read(size)
                req.rfile.readline()
                if size == 0:
                    return data
        return req.rfile.read(int(req.headers.get("Content-Length") or 0))

    @staticmethod
    def answer(req, status: int, obj) -> None:
        data = json.dumps(obj).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def refuse(self, req) -> None:
        if req.path.split("?")[0] not in self.TOLERATED:
            self.unexpected.append(f"{req.command} {req.path}")
        self.answer(req, 404, {"error": f"stand-in Hub: no {req.command} {req.path}"})

    def post(self, req) -> None:
        path = req.path.split("?")[0]
        body = self.body(req)
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo = f"{payload['organization']}/{payload['name']}"
            if repo in self.repos:
                return self.answer(req, 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo}"})
            self.repos[repo] = {"private": payload.get("visibility") == "private", "files": {}, "commits": []}
            return self.answer(req, 200, {"url": f"{self.url}/{repo}"})
        if path == "/api/validate-yaml":
            return self.answer(req, 200, {"errors": [], "warnings": []})
        if len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] in ("preupload", "commit"):
            repo = f"{parts[2]}/{parts[3]}"
            if repo not in self.repos:
                return self.answer(req, 404, {"error": f"Repository Not Found: {repo}"})
            if parts[4] == "preupload":
                files = json.loads(body)["files"]
                return self.answer(req, 200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                         "shouldIgnore": False} for f in files]})
            if self.fail_commits.get(repo, 0) > 0:
                self.fail_commits[repo] -= 1
                return self.answer(req, 500, {"error": "stand-in Hub: this commit is refused"})
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            assert lines[0]["key"] == "header", lines[0]
            stored = self.repos[repo]
            for line in lines[1:]:
                if line["key"] != "file" or line["value"].get("encoding") != "base64":
                    self.unexpected.append(f"commit line {line['key']}")
                    continue
                stored["files"][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
            stored["commits"].append(lines[0]["value"]["summary"])
            oid = f"{len(stored['commits']):040x}"
            return self.answer(req, 200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid,
                                          "pullRequestUrl": None})
        return self.refuse(req)


@pytest.fixture(scope="module")
def hub():
    stand_in = StandInHub()
    yield stand_in
    stand_in.server.shutdown()


@pytest.fixture(scope="module")
def shipped(tmp_path_factory, hub):
    """One tiny run that ships everything: card, ONNX graph, push to the stand-in."""
    tmp = tmp_path_factory.mktemp("shipped")
    run_dir = tmp / "run"
    res = prune_run([*RUN, "export.onnx=true", f"export.push_to_hub={REPO}", f"hydra.run.dir={run_dir}"], cwd=tmp,
                    env_extra=hub.env())
    assert res.returncode == 0, (res.stderr[-3000:], hub.unexpected)
    assert not hub.unexpected
    return run_dir


def model_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_the_card_says_what_was_asked_reached_and_scored(shipped):
    import prune_cli

    card = (shipped / "model" / "README.md").read_text(encoding="utf-8")
    metrics = json.loads((shipped / "metrics.json").read_text())
    _, front, text = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta == {"library_name": "transformers", "base_model": "sentence-transformers/all-MiniLM-L6-v2",
                    "tags": ["prune-cli", "pruned", "random"], "pipeline_tag": "text-classification"}
    assert "| Method | `random` |" in text and "| Budget asked for | `heads=36` |" in text
    assert (metrics["heads_kept"], metrics["heads_total"]) == (36, 72) and "| Heads kept | 36 / 72 |" in text
    assert f"{metrics['params']:,} of {metrics['params_dense']:,} dense" in text
    assert f"| **accuracy** | {metrics['eval']['accuracy']:.4f} |" in text  # the very numbers of metrics.json
    assert f"| loss | {metrics['eval']['loss']:.4f} |" in text
    overrides = yaml.safe_load((shipped / ".hydra" / "overrides.yaml").read_text())
    assert "prune-run debug=tiny task=rte" in text and "heads=36 'pipeline=[prune,evaluate,export]'" in text
    assert len(overrides) > 5 and all(o.split("=")[0] in text for o in overrides)
    assert f"prune-cli {prune_cli.__version__}" in text
    assert f"AutoModelForSequenceClassification.from_pretrained('{REPO}', trust_remote_code=True)" in text
    assert f"prune_cli.load_pruned(snapshot_download('{REPO}'))" in text
    assert "## ONNX" in text and "`input_ids`, `attention_mask`" in text


@pytest.mark.slow
def test_the_onnx_graph_equals_torch_at_a_shape_it_was_not_exported_with(shipped):
    import onnxruntime
    from transformers import AutoTokenizer

    from prune_cli import load_pruned

    folder = shipped / "model"
    record = next(s for s in json.loads((shipped / "metrics.json").read_text())["stages"] if s["stage"] == "export")
    onnx = record["onnx"]
    assert onnx["file"] == "model.onnx" and onnx["max_abs_diff"] <= 1e-4 and onnx["outputs"] == ["logits"]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    texts = ["One.", "Two words.", "Four sentences this time, of four lengths, none of them the export's.",
             "And a last one, padded too."]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    shape = list(batch["input_ids"].shape)
    assert shape not in [c["input_ids"] for c in onnx["checked"]]
    model = load_pruned(folder).eval()
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    (got,) = session.run(None, {k: batch[k].numpy() for k in ("input_ids", "attention_mask")})
    assert got.shape == tuple(expected.shape)
    assert float((torch.from_numpy(got) - expected).abs().max()) < 1e-4


@pytest.mark.slow
def test_the_push_holds_every_file_byte_for_byte(shipped, hub):
    local = model_files(shipped / "model")
    assert {"README.md", "config.json", "model.safetensors", "modeling_pruned.py", "model.onnx"} <= set(local)
    stored = hub.repos[REPO]
    assert stored["private"] is True  # export.hub_private defaults to true
    assert stored["files"] == local
    assert len(stored["commits"]) == 1 and stored["commits"][0].startswith("prune-cli ")
    record = next(s for s in json.loads((shipped / "metrics.json").read_text())["stages"] if s["stage"] == "export")
    assert record["hub"] == f"{hub.url}/{REPO}"


@pytest.mark.slow
def test_a_failed_push_is_one_line_and_the_same_command_pushes_again(tmp_path, hub):
    """The commit is refused once: the run ends with one line (exit 1), the model saved and the
    export stage not committed; the same command resumes there and pushes."""
    repo = "me/tiny-flaky"
    hub.fail_commits[repo] = 1
    run_dir = tmp_path / "run"
    args = [*RUN, f"export.push_to_hub={repo}", "export.hub_private=false", f"hydra.run.dir={run_dir}"]
    res = prune_run(args, cwd=tmp_path, env_extra=hub.env())
    assert res.returncode == 1, res.stderr[-3000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith(f"prune-run: error: export.push_to_hub='{repo}': the push to {hub.url} failed"), last
    assert "500" in last and "same command again resumes at the export stage" in last
    assert "Traceback" not in res.stderr
    assert (run_dir / "model" / "model.safetensors").is_file() and not (run_dir / "metrics.json").exists()
    progress = (run_dir / "checkpoints" / "progress.json").read_text()
    assert '"done": 1' in progress  # prune and evaluate are committed: a rerun starts at export
    assert hub.repos[repo]["files"] == {}

    res = prune_run(args, cwd=tmp_path, env_extra=hub.env())
    assert res.returncode == 0, res.stderr[-3000:]
    assert hub.repos[repo]["files"] == model_files(run_dir / "model") and hub.repos[repo]["private"] is False
    assert not hub.unexpected


def test_offline_push_is_one_line_before_anything_loads(tmp_path):
    res = prune_run([*RUN, f"export.push_to_hub={REPO}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path,
                    env_extra={"HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2, (res.stdout[-2000:], res.stderr[-2000:])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"export.push_to_hub='{REPO}'" in lines[0] and "HF_HUB_OFFLINE" in lines[0], lines
    assert not (tmp_path / "run").exists()


BAD = [
    (["export.push_to_hub=me/x", "export_model=false"], "export.push_to_hub='me/x': null with export_model=false"),
    (["export.onnx=true", "export_model=false"], "export.onnx=True: false with export_model=false"),
    (["export.onnx=true", "pipeline=[finetune,evaluate]"], "export.onnx=True: false, or a pipeline with an export"),
    (["export.push_to_hub=me/x", "pipeline=[finetune,evaluate]"], "export.push_to_hub='me/x': null, or a pipeline"),
    (["export.push_to_hub=no-owner"], "export.push_to_hub='no-owner': a Hub model repo <owner>/<name>"),
    (["export.push_to_hub=me/two/slashes"], "export.push_to_hub='me/two/slashes': a Hub model repo"),
    (["export.hub_private=maybe"], "export.hub_private='maybe': true or false"),
    (["export.onnx=1"], "export.onnx=1: true or false"),
]


@pytest.mark.parametrize("overrides, line", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_export_options_that_cannot_work_are_refused_up_front(overrides, line):
    with pytest.raises(ConfigError) as err:
        validate(cfg(*overrides))
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


def test_onnx_without_its_packages_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # `import onnxscript` raises ImportError
    with pytest.raises(ConfigError, match=r"^export.onnx=True: false, or the ONNX packages first: "
                                          r"pip install 'prune-cli\[onnx\]' \(onnxscript is not installed\)$"):
        validate(cfg("export.onnx=true"))


def test_push_without_a_token_or_online_is_refused(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="^export.push_to_hub='me/x': null while HF_HUB_OFFLINE=1 is set"):
        validate(cfg("export.push_to_hub=me/x"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(ConfigError, match=r"^export.push_to_hub='me/x': null, or a Hub token with write access"):
        validate(cfg("export.push_to_hub=me/x"))
    validate(cfg("export.onnx=true"))  # (the packages are installed here)


@pytest.mark.slow
def test_the_bench_stage_times_the_onnx_graph_beside_torch(tmp_path):
    run_dir = tmp_path / "run"
    res = prune_run([*TINY, "method=random", "heads=36", "pipeline=[prune,export,bench]", "logger.mode=disabled",
                     "export.onnx=true", "bench.batches=[1]", "bench.seq_lens=[16]", "bench.repeats=3",
                     "bench.warmup=1", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads((run_dir / "bench.json").read_text())["results"]
    assert rows and all(r["onnx_ms"] > 0 and r["onnx_speedup"] > 0 for r in rows)
