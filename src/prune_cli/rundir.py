"""One run, one folder: a finished run is never overwritten, two processes never share a folder.

* A folder holding `metrics.json` holds a finished run (the pipeline writes it last). The same
  command again says so and does nothing; other settings are refused; `+overwrite=true` reruns
  into the folder after moving the old results to `<run>/previous-<time>/`.
* `<run>/.prune-run/lock` names the process running the folder (pid, host, SLURM job). A second
  process is refused; a lock whose holder is gone (its pid dead on this host, the host rebooted,
  or an earlier start of the same SLURM job: a requeue) is taken over with a warning.
* `<run>/.prune-run/config.yaml` and `hydra/`: the settings a finished run was made with (what a
  later command is compared with) and Hydra's files as the run wrote them. Hydra rewrites
  `<run>/.hydra/` before any of our code runs; a refused or finished-before command puts them back.

Everything here reads only omegaconf and the standard library: `prune-run` calls it before Hydra
starts (and before torch is imported) to refuse or finish at once without touching the folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from prune_cli.checkpoints import atomic_write
from prune_cli.errors import ConfigError

RECORD = ".prune-run"
#: keys that may differ between two commands on one folder: how a run is watched, not what it
#: computes (`overwrite` is the request itself)
FREE = ("logger", "trainer.progress_bar", "cache", "overwrite")
#: what a run folder may hold without holding any work (Hydra's files, an empty log, the lock)
_NO_WORK = {".hydra", RECORD, "wandb"}


# ------------------------------------------------------------------ settings
def flat(cfg) -> dict:
    container = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(container, "")
    return {k: v for k, v in out.items() if not k.startswith("hydra") and not any(
        k == free or k.startswith(free + ".") for free in FREE)}


def overwrite(cfg) -> bool:
    """`+overwrite=true`: rerun into a folder that holds a finished run."""
    value = cfg.get("overwrite") if hasattr(cfg, "get") else None
    if value is None or isinstance(value, bool):
        return bool(value)
    raise ConfigError("overwrite", value, "true or false")


def finished(run_dir: Path) -> dict | None:
    """The metrics of the finished run `run_dir` holds (None: none, or not finished)."""
    try:
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else {}


def _saved_settings(run_dir: Path, hydra_intact: bool):
    record = Path(run_dir) / RECORD / "config.yaml"
    if record.is_file():
        return OmegaConf.load(record)
    legacy = Path(run_dir) / ".hydra" / "config.yaml"  # a run finished before the record existed
    if hydra_intact and legacy.is_file():
        return OmegaConf.load(legacy)
    return None


def differences(run_dir: Path, cfg, hydra_intact: bool = True) -> list[str] | None:
    """How `cfg` differs from the settings of the finished run in `run_dir`, as `key=new where
    the run has key=old`; [] when they agree, None when the run's settings are unknown (a run
    from an older version once Hydra has rewritten its .hydra/)."""
    saved = _saved_settings(run_dir, hydra_intact)
    if saved is None:
        return None
    try:
        old, new = flat(saved), flat(cfg)
    except Exception:  # noqa: BLE001 - an interpolation only Hydra's run can resolve: the run can't tell
        return None
    # a key one side lacks is a key of another version (a run finished before the key existed):
    # what it computes is what the run's own version computed
    return [f"{k}={_show(new[k])} where the run has {k}={_show(old[k])}"
            for k in sorted(set(old) & set(new)) if old[k] != new[k]]


def _show(value) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def refusal(run_dir: Path, metrics: dict, diff: list[str] | None) -> ConfigError:
    what = (f"other settings: {', '.join(diff[:3])}" + (f" (+{len(diff) - 3} more)" if len(diff) > 3 else "")
            if diff else "settings this version cannot read back")
    return ConfigError("hydra.run.dir", str(run_dir),
                       f"holds a finished run ({_result(metrics)}) with {what}; give a new folder, or "
                       "+overwrite=true to rerun it there (its results move to previous-<time>/ inside it)")


def done_line(run_dir: Path, metrics: dict) -> str:
    return (f"prune-run: {run_dir}: done before ({_result(metrics)}), nothing redone; "
            "+overwrite=true reruns it")


def _result(metrics: dict) -> str:
    out = f"{metrics.get('primary_metric')}={metrics.get('primary')}"
    if metrics.get("heads_total") is not None:
        out += f" heads={metrics.get('heads_kept')}/{metrics.get('heads_total')}"
    return out


def keep_settings(run_dir: Path, cfg, ckpt_dir: Path) -> None:
    """Before the run's metrics.json: the settings it was started with (checkpoints/ goes) and
    Hydra's record of them, for the comparisons and restores above."""
    record = Path(run_dir) / RECORD
    (record / "hydra").mkdir(parents=True, exist_ok=True)
    started = Path(ckpt_dir) / "config.yaml"
    text = started.read_text() if started.is_file() else OmegaConf.to_yaml(cfg, resolve=True)
    atomic_write(record / "config.yaml", text)
    source = Path(ckpt_dir) / "hydra"
    source = source if source.is_dir() else Path(run_dir) / ".hydra"
    for f in source.glob("*.yaml"):
        shutil.copy2(f, record / "hydra" / f.name)


def move_aside(run_dir: Path) -> Path:
    """`+overwrite=true`: every result of the finished run into `<run>/previous-<time>/` (with
    its .hydra/ as it was, not as Hydra has just rewritten it), so the rerun starts empty."""
    run_dir = Path(run_dir)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    dest, n = run_dir / f"previous-{stamp}", 1
    while dest.exists():
        n += 1
        dest = run_dir / f"previous-{stamp}-{n}"
    dest.mkdir()
    old_hydra = _hydra_source(run_dir)
    for entry in sorted(run_dir.iterdir()):
        if entry.name in (".hydra", RECORD, dest.name) or entry.name.startswith("previous-") or entry.suffix == ".log":
            continue  # (Hydra's job log is open for appending: it stays and goes on)
        entry.rename(dest / entry.name)
    if old_hydra:
        (dest / ".hydra").mkdir()
        for name, (data, stat) in old_hydra.items():
            (dest / ".hydra" / name).write_bytes(data)
            os.utime(dest / ".hydra" / name, ns=stat)
    record = run_dir / RECORD
    for name in ("config.yaml", "hydra"):
        if (record / name).exists():
            (dest / RECORD).mkdir(exist_ok=True)
            (record / name).rename(dest / RECORD / name)
    return dest


# ------------------------------------------------------------------ Hydra's files
#: run folder (absolute) -> what prune-run saw there before Hydra started: whether it existed,
#: its entries, the first folder of its path that did not exist, .hydra/ files (bytes, times)
_SEEN: dict[str, dict] = {}


def _key(run_dir: Path) -> str:
    return str(Path(run_dir).expanduser().resolve())


def remember(run_dir: Path, stamped: bool = False) -> None:
    """Called before Hydra starts: what the folder held, to put back or remove after a refusal.
    `stamped`: Hydra will name the folder itself (the time in its name): only its parent is known."""
    run_dir = Path(run_dir).expanduser().resolve()
    if stamped:
        first_new = next((f for f in [run_dir.parent, *run_dir.parents] if not f.exists() and f.parent.exists()), None)
        _SEEN["*"] = {"parent": str(run_dir.parent), "first_new": first_new}
        return
    first_new = None
    for folder in [run_dir, *run_dir.parents]:
        if folder.exists():
            break
        first_new = folder
    files = {}
    if (run_dir / ".hydra").is_dir():
        for f in (run_dir / ".hydra").iterdir():
            if f.is_file():
                st = f.stat()
                files[f.name] = (f.read_bytes(), (st.st_atime_ns, st.st_mtime_ns))
    _SEEN[_key(run_dir)] = {"existed": run_dir.is_dir(), "first_new": first_new, "hydra": files,
                            "names": {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()}


def _hydra_source(run_dir: Path) -> dict:
    """The run's own .hydra/ files: as seen before Hydra started, else as the run kept them."""
    seen = _SEEN.get(_key(run_dir))
    if seen and seen["hydra"]:
        return dict(seen["hydra"])
    for folder in (Path(run_dir) / RECORD / "hydra", Path(run_dir) / "checkpoints" / "hydra"):
        if folder.is_dir():
            out = {}
            for f in folder.glob("*.yaml"):
                st = f.stat()
                out[f.name] = (f.read_bytes(), (st.st_atime_ns, st.st_mtime_ns))
            if out:
                return out
    return {}


def restore_hydra(run_dir: Path) -> None:
    """Put back the .hydra/ files Hydra rewrote for a command that is not going to run here."""
    old = _hydra_source(run_dir)
    hydra_dir = Path(run_dir) / ".hydra"
    if not old or not hydra_dir.is_dir():
        return
    for name, (data, stat) in old.items():
        path = hydra_dir / name
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        os.utime(path, ns=stat)


def forget(run_dir: Path) -> None:
    """After a refusal inside Hydra (a bad value found once Hydra had made the folder): remove
    what this command created there -- never a folder or file that was there before, nor a
    folder that holds work (a checkpoint, a logged row, a result)."""
    run_dir = Path(run_dir)
    seen = _SEEN.get(_key(run_dir)) or {"existed": False, "first_new": None, "hydra": {}, "names": set()}
    stamped = _SEEN.get("*")
    if _key(run_dir) not in _SEEN and stamped and stamped["parent"] == _key(run_dir.parent):
        seen["first_new"] = stamped["first_new"] or run_dir  # the dated folder and the parents Hydra made
    if seen["existed"]:
        restore_hydra(run_dir)
    if not run_dir.is_dir() or _lock(run_dir).exists():
        return  # (a lock here is another process's: this one has let go of its own)
    new = [entry for entry in run_dir.iterdir() if entry.name not in seen["names"]]
    if _holds_work(new):
        return
    for entry in new:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    if seen["existed"]:
        return
    stop = seen["first_new"].parent if seen["first_new"] is not None else run_dir.parent
    folder = run_dir
    while folder != stop and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
        if seen["first_new"] is None:
            break  # not seen before Hydra (its own dated folder): the run folder alone


def _holds_work(entries: list[Path]) -> bool:
    for entry in entries:
        if entry.name in _NO_WORK or (entry.is_file() and entry.suffix == ".log"):
            continue
        if entry.name == "log.jsonl" and entry.is_file() and entry.stat().st_size == 0:
            continue
        if entry.name == "checkpoints" and entry.is_dir() and {p.name for p in entry.iterdir()} <= {"config.yaml",
                                                                                                   "hydra"}:
            continue
        return True
    return False


# ------------------------------------------------------------------ the lock
def _me() -> dict:
    job = os.environ.get("SLURM_JOB_ID")
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid()),
            "boot": _boot_id(), "slurm_job": job, "slurm_restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)
            if job else None, "since": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:]}


def _start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot, Linux): a reused pid is another process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _lock(run_dir: Path) -> Path:
    return Path(run_dir) / RECORD / "lock"


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _gone(holder: dict) -> str | None:
    """Why the lock's holder no longer runs (None: it may be running)."""
    me = _me()
    if not holder.get("pid"):
        return "an unreadable lock"
    if me["slurm_job"] and holder.get("slurm_job") == me["slurm_job"] and \
            holder.get("slurm_restart") != me["slurm_restart"]:
        return f"an earlier start of SLURM job {me['slurm_job']} (requeued)"
    if holder.get("host") != me["host"]:
        return None  # another machine: its processes cannot be seen from here
    if holder.get("boot") and me["boot"] and holder["boot"] != me["boot"]:
        return "this host has rebooted since"
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return "no longer running"
    except PermissionError:
        pass  # alive, another user's
    except (OSError, ValueError, OverflowError):
        return "no longer running"
    started = holder.get("started")
    if started is not None and _start_time(int(holder["pid"])) not in (None, started):
        return "no longer running (its pid is another process now)"
    return None


def _describe(holder: dict) -> str:
    out = f"pid {holder.get('pid')} on {holder.get('host')}"
    if holder.get("slurm_job"):
        out += f" (SLURM job {holder['slurm_job']})"
    return out + (f" since {holder['since']}" if holder.get("since") else "")


def busy(run_dir: Path) -> ConfigError | None:
    """The refusal for a folder another live process runs (None: free, or its lock is stale)."""
    holder = _read(_lock(run_dir))
    if holder is None or _gone(holder) is not None:
        return None
    return ConfigError("hydra.run.dir", str(run_dir),
                       f"in use by {_describe(holder)}: one process per run folder (if that process is gone, "
                       f"delete {_lock(run_dir)})")


def acquire(run_dir: Path) -> None:
    """Claim `run_dir` for this process (one process of a multi-process run: rank 0 claims it
    for all). Raises the busy refusal; a stale lock is taken over with one warning line."""
    lock = _lock(run_dir)
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = _me()
    tmp = lock.with_name(f"lock.{me['pid']}.tmp")
    tmp.write_text(json.dumps(me) + "\n")
    try:
        for _ in range(100):
            try:
                os.link(tmp, lock)  # atomic, and the lock is never seen half-written
                return
            except FileExistsError:
                pass
            holder = _read(lock)
            if holder is None:
                continue  # released just now
            why = _gone(holder)
            if why is None:
                raise busy(run_dir) or ConfigError("hydra.run.dir", str(run_dir), "in use by another process")
            if _take_over(lock, holder, tmp):
                print(f"prune-run: warning: {run_dir}: took over the lock of {_describe(holder)}: {why}",
                      file=sys.stderr)
                return
            time.sleep(0.1)  # another process is taking it over: see who won
        raise ConfigError("hydra.run.dir", str(run_dir), f"its lock {lock} could not be taken")
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(lock: Path, holder: dict, mine: Path) -> bool:
    guard = lock.with_name("lock.takeover")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            if time.time() - guard.stat().st_mtime > 60:  # a taker that died half-way
                guard.unlink(missing_ok=True)
        except OSError:
            pass
        return False
    try:
        if _read(lock) != holder:
            return False
        fresh = lock.with_name(f"lock.{os.getpid()}.new")
        shutil.copyfile(mine, fresh)
        os.replace(fresh, lock)
        return True
    finally:
        os.close(fd)
        guard.unlink(missing_ok=True)


def release(run_dir: Path) -> None:
    lock = _lock(run_dir)
    holder = _read(lock)
    me = _me()
    if holder and holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
        lock.unlink(missing_ok=True)
        try:
            lock.parent.rmdir()  # only when nothing else is kept there
        except OSError:
            pass
