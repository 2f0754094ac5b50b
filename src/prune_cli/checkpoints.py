"""Files a resume trusts, and every file a run leaves: written so that a crash, a kill or a full
disk never leaves half a file where a good one was, and checked before a resume uses them.

One way to write a file (`atomic_write`): into `<name>.tmp` beside it, flushed to the disk
(fsync), then renamed over the old one, so a reader sees the old file or the new one, never a
mix. Checkpoints also get a checksum, `<name>.sha256` in `sha256sum` format (so `sha256sum -c`
checks it by hand too), written after the file: a file that was cut short or damaged on disk
later fails it. A checkpointed model folder holds `checksums.sha256` over its files and is
written as `<folder>.tmp`, then renamed. A file without its checksum (a crash between the two
renames, or a run started before checksums) is trusted only if its own format parses.

Two generations (`keep_previous`): the file being replaced becomes `<stem>.prev<suffix>` once the
new one is complete, so a latest checkpoint that turns out damaged leaves the one before it;
`load_newest` tries the latest, then the previous one, says in ONE warning line which file was
damaged and what the run does instead, and deletes the damaged file so it is never promoted.

A full disk while writing (ENOSPC, or a quota) is `DiskFull`: one line naming the file and the
last good checkpoint, exit status 1, the temporary file removed and the old file untouched.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

SIDECAR = ".sha256"
MANIFEST = "checksums.sha256"
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
_FULL_TEXT = ("no space left on device", "os error 28", "disk quota exceeded", "storagefull")


class DiskFull(SystemExit):
    """No space left while writing `path`. A SystemExit: the message is the whole output (no
    traceback) and the exit status 1, at any depth of the run and through Hydra, which lets
    SystemExit pass; a sweep records it as the job's error (`prune_cli_message`)."""

    def __init__(self, path: Path, kept: Path | None):
        self.path, self.kept = Path(path), kept
        tail = (f"the last good checkpoint {kept} is kept; free space and rerun to resume" if kept is not None
                else "no checkpoint was written before it; free space and rerun")
        self.prune_cli_message = f"no space left on device writing {self.path} ({tail})"
        super().__init__(f"prune-run: error: {self.prune_cli_message}")


class Damaged(Exception):
    """A checkpoint file that is cut short, altered, or does not parse (`path` names the file;
    `remove`: what must go with it, e.g. the model folder holding it)."""

    def __init__(self, path: Path, reason: str, remove: Path | None = None):
        self.path, self.reason, self.remove = Path(path), reason, remove
        super().__init__(f"{path}: {reason}")


# ---------------------------------------------------------------------------- names
def previous(path: Path) -> Path:
    """The generation before `path`: train-0.pt -> train-0.prev.pt."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def sidecar(path: Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR)


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


# ---------------------------------------------------------------------------- disk full
def is_disk_full(err: BaseException, folder: Path | None = None) -> bool:
    """Whether `err` (or what it was raised from) is a full disk. torch.save and safetensors wrap
    the OSError in errors of their own, so the chain and the text are both read; failing that, a
    folder with almost no free space left says it."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return True
        if any(t in str(e).lower() for t in _FULL_TEXT):
            return True
        e = e.__cause__ or e.__context__
    if folder is not None:
        try:
            return shutil.disk_usage(folder).free < (1 << 20)
        except OSError:
            return False
    return False


def last_good(path: Path) -> Path | None:
    """The newest checkpoint of the run that `path` belongs to (a file in its checkpoints/
    folder, or in the run folder beside it), or None."""
    path = Path(path)
    for folder in list(path.parents)[:3]:
        ckpt = folder if folder.name == "checkpoints" else folder / "checkpoints"
        if ckpt.is_dir():
            found = [p for p in (*ckpt.glob("train-*.pt"), ckpt / "progress.json", previous(ckpt / "progress.json"))
                     if p.is_file()]
            return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None
    return None


@contextmanager
def writing(path: Path, kept: Path | None = None) -> Iterator[None]:
    """Turn a full disk while the block writes `path` into `DiskFull` (naming `kept`, or the
    run's newest checkpoint); other errors pass unchanged."""
    try:
        yield
    except DiskFull:
        raise
    except BaseException as err:
        if isinstance(err, Exception) and is_disk_full(err, Path(path).parent):
            raise DiskFull(path, kept if kept is not None else last_good(path)) from None
        raise


# ---------------------------------------------------------------------------- writing
def digest(path: Path, fsync: bool = False) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
        if fsync:
            os.fsync(f.fileno())
    return h.hexdigest()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the renames are still atomic
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | str | Callable, *, checksum: bool = False, keep_previous: bool = False,
                 kept: Path | None = None) -> Path:
    """Write `data` (bytes, text, or a callable that writes into a binary file object, e.g.
    `lambda f: torch.save(state, f)`) to `path` so that no reader ever sees half of it.

    `checksum`: `<path>.sha256` is written after it; `keep_previous`: the old `path` becomes
    `previous(path)` (with its checksum) only once the new one is on disk. A full disk raises
    `DiskFull` with nothing changed but the temporary file removed."""
    path = Path(path)
    tmp = _tmp(path)
    with writing(path, kept):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                if callable(data):
                    data(f)  # (a file object, not a path: torch then reports the OSError, not an iostream error)
                else:
                    f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
            sha = digest(tmp) if checksum else None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        side = sidecar(path)
        # every moment below leaves each name either with its own checksum or with none (then its
        # format is checked): a checksum never sits beside a file it was not computed for
        if keep_previous and path.is_file():
            prev = previous(path)
            sidecar(prev).unlink(missing_ok=True)
            os.replace(path, prev)
            if side.is_file():
                os.replace(side, sidecar(prev))
        else:
            side.unlink(missing_ok=True)
        os.replace(tmp, path)
        if sha is not None:
            side_tmp = _tmp(side)
            side_tmp.write_text(f"{sha}  {path.name}\n")
            os.replace(side_tmp, side)
        _fsync_dir(path.parent)
    return path


def write_folder(folder: Path, write: Callable[[Path], object], kept: Path | None = None) -> Path:
    """`write(tmp_folder)` fills a model folder; it gets `checksums.sha256` over its files (after
    the safetensors in it are checked to be whole) and then takes the name `folder`."""
    folder = Path(folder)
    tmp = _tmp(folder)
    with writing(folder, kept):
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            write(tmp)
            for f in sorted(tmp.glob("*.safetensors")):
                _check_safetensors(f)  # a writer that lost bytes without an error must not be sealed
            lines = [f"{digest(f, fsync=True)}  {f.name}\n" for f in sorted(tmp.iterdir())
                     if f.is_file() and f.name != MANIFEST]
            manifest = tmp / MANIFEST
            manifest.write_text("".join(lines))
            digest(manifest, fsync=True)
            _fsync_dir(tmp)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
            _fsync_dir(folder.parent)
        except DiskFull as err:  # (raised inside by the writer, about the temporary name)
            shutil.rmtree(tmp, ignore_errors=True)
            raise DiskFull(folder, kept if kept is not None else err.kept) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return folder


def remove(path: Path) -> None:
    """Both generations of a checkpoint file, their checksums and any half-written copy."""
    path = Path(path)
    for p in (path, previous(path)):
        for q in (p, sidecar(p), _tmp(p), _tmp(sidecar(p))):
            q.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- checking
def check(path: Path) -> None:
    """Raise `Damaged` if `path` is missing or does not match its checksum (if it has one)."""
    path = Path(path)
    if not path.is_file():
        raise Damaged(path, "missing")
    side = sidecar(path)
    if not side.is_file():
        return  # no checksum: the loader's own parse decides
    try:
        want = side.read_text().split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        raise Damaged(side, "its checksum file is unreadable") from None
    if digest(path) != want:
        raise Damaged(path, f"checksum mismatch, {path.stat().st_size} bytes: cut short or altered")


def check_folder(folder: Path) -> None:
    """Raise `Damaged` naming the first file of a model folder that is missing, fails its
    checksum, or (no checksums written) whose safetensors header does not match its size."""
    folder = Path(folder)
    if not folder.is_dir():
        raise Damaged(folder, "missing")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        for f in sorted(folder.glob("*.safetensors")):
            _check_safetensors(f)
        return
    try:
        entries = [line.split(None, 1) for line in manifest.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError):
        raise Damaged(manifest, "unreadable") from None
    for want, name in entries:
        f = folder / name.strip()
        if not f.is_file():
            raise Damaged(f, "missing")
        if digest(f) != want:
            raise Damaged(f, f"checksum mismatch, {f.stat().st_size} bytes: cut short or altered")


def _check_safetensors(path: Path) -> None:
    """The header parses and the data it describes ends exactly where the file ends."""
    import json
    import struct

    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(n))
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError, struct.error, UnicodeDecodeError) as err:
        raise Damaged(path, f"not a safetensors file ({err})") from None
    if 8 + n + end != size:
        raise Damaged(path, f"{size} bytes where its header describes {8 + n + end}: cut short or altered")


def load_newest(path: Path, load: Callable[[Path], T], *, fallback: str,
                describe: Callable[[Path, T], str] | None = None, main: bool = True) -> T | None:
    """`load(file)` of the newest good generation of `path` (the latest, else the previous one),
    or None if there is none. `load` raises `Damaged` for a file it depends on (a model folder);
    any other error while loading counts as a damaged file too.

    A good latest file is said in one line (`describe(file, loaded)`: what the run resumes). A
    damaged (or, beside a previous one, missing) latest file is said in ONE warning line: the
    file, why, and what is done instead (`describe(file, loaded)`, or `fallback` when no
    generation is good). Damaged files are deleted (`main`: only by the process that writes), so
    a later save never keeps one as the previous generation."""
    path = Path(path)
    problems: list[Damaged] = []
    for candidate in (path, previous(path)):
        if not candidate.is_file():
            if candidate == path:
                problems.append(Damaged(candidate, "missing"))
            continue
        try:
            check(candidate)
            loaded = load(candidate)
        except Exception as err:  # noqa: BLE001 - torch.load / json / safetensors: anything unreadable
            if not isinstance(err, Damaged):
                text = str(err).strip().splitlines()
                err = Damaged(candidate, f"unreadable: {type(err).__name__}: {text[0] if text else ''}")
            problems.append(err)
            if main:
                _discard(candidate, err.remove)
            continue
        what = describe(candidate, loaded) if describe is not None else f"resuming from {candidate}"
        if candidate != path and main:
            _warn(problems[0], what)
        elif main:  # the one line a resumed run prints: where it picks up
            print(f"prune-run: {what}", file=sys.stderr, flush=True)
        return loaded
    damaged = [p for p in problems if p.reason != "missing" or p.path != path]
    if damaged and main:
        _warn(damaged[0], fallback)
    return None


def _warn(problem: Damaged, instead: str) -> None:
    """One line on stderr in the CLI's voice (as validate.warn), the run goes on."""
    print(f"prune-run: warning: damaged checkpoint {problem.path} ({problem.reason}): {instead} instead",
          file=sys.stderr)


def _discard(path: Path, also: Path | None) -> None:
    for p in (path, also):
        if p is None:
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
            sidecar(p).unlink(missing_ok=True)
