"""`prune-run`: the Hydra entry point.

Two jobs before Hydra runs anything: turn an unknown config-group option into one line (Hydra's
own message is several lines and exits 1), and, for single runs, compose the config once so
Hydra's errors (unknown key, bad override syntax) become one line with exit status 2 too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from prune_cli import user_config_dir
from prune_cli.errors import ConfigError, Diverged
from prune_cli.groups import CONF_MODULE, group_options


def _die(message: str, status: int = 2) -> None:
    print(f"prune-run: error: {message}", file=sys.stderr)
    sys.exit(status)


def user_config_dirs(args: list[str]) -> tuple[list[Path], set[int]]:
    """Folders given with `--config-dir X` / `-cd X` / `--config-dir=X` (Hydra searches them
    before the packaged configs, so `experiment=my_curve` may live there), and the positions of
    the words they took in `args` (not overrides)."""
    dirs, taken = [], set()
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd") and i + 1 < len(args):
            dirs.append(args[i + 1])
            taken.update((i, i + 1))
        elif arg.startswith(("--config-dir=", "-cd=")):
            dirs.append(arg.split("=", 1)[1])
            taken.add(i)
    return [Path(d).expanduser().resolve() for d in dirs], taken


def _searchpath(dirs: list[Path]) -> list[str]:
    """The override that adds `--config-dir` folders to what compose() searches (none: nothing).
    It replaces config.yaml's hydra.searchpath, so the user folder (`${user_searchpath:}`) is
    named again."""
    if not dirs:
        return []
    user = user_config_dir()
    return ["hydra.searchpath=[" + ",".join(f"file://{d}" for d in [*dirs, *([user] if user else [])]) + "]"]


def check_group_choices(args: list[str]) -> None:
    """`method=foo` where method/foo.yaml exists neither in the package nor in a --config-dir ->
    one line naming the options."""
    extra, _ = user_config_dirs(args)
    for missing in (d for d in extra if not d.is_dir()):
        _die(f"--config-dir={missing}: not a folder")
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        key = key.lstrip("+~")
        if key.startswith("hydra") or "." in key:
            continue
        options = group_options(key, extra)
        if options is None:
            continue
        for choice in _sweep_values(value):
            if choice not in options and choice != "null":
                _die(f"{key}={choice}: unknown option; one of {', '.join(options)}")


#: the Hydra plugin (module, extra) each launcher option needs, and what a missing one is called
LAUNCHER_PLUGINS = {"slurm": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
                    "local": ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher"),
                    "parallel": ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher")}


def check_launcher(args: list[str]) -> None:
    """`hydra/launcher=slurm|local|parallel` without its Hydra plugin installed -> one line naming the
    extra (Hydra's own error is a multi-line composition trace about a missing `submitit_slurm`)."""
    import importlib.util

    for arg in args:
        if arg.lstrip("+").startswith("hydra/launcher="):
            choice = arg.split("=", 1)[1]
            module, package = LAUNCHER_PLUGINS.get(choice, (None, None))
            try:
                missing = module is not None and importlib.util.find_spec(module) is None
            except ImportError:  # its parent package is missing too
                missing = True
            if missing:
                _die(f"hydra/launcher={choice}: needs the {package} plugin, which is not installed: "
                     "pip install 'prune-cli[slurm]'")


def _sweep_values(value: str) -> list[str]:
    if value.startswith(("choice(", "range(", "glob(")):
        return []  # leave sweep functions to Hydra
    return [v.strip() for v in value.split(",") if v.strip()]


def precompose(args: list[str]) -> None:
    """Compose once outside Hydra's runner (single runs only) to report override errors in one line."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    extra, taken = user_config_dirs(args)
    overrides = [a for i, a in enumerate(args)
                 if i not in taken and not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    overrides += _searchpath(extra)
    try:
        with initialize_config_module(CONF_MODULE, version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except Exception as err:  # noqa: BLE001 - Hydra/OmegaConf errors: keep their first line, it names the key
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        _die(first)
    finally:
        GlobalHydra.instance().clear()
    from prune_cli import rundir

    try:
        rundir.overwrite(cfg)
    except ConfigError as err:
        _die(str(err))
    run_dir = given_run_dir(args)
    if run_dir is not None and run_dir.is_dir():  # before Hydra rewrites <run>/.hydra/ of the run found there
        check_owner(run_dir, cfg)


def given_run_dir(args: list[str]) -> Path | None:
    """`hydra.run.dir=` of the command line (the last one; quotes as shared_run_dir writes them)."""
    value = next((a.split("=", 1)[1] for a in reversed(args) if a.startswith("hydra.run.dir=")), None)
    if value is None:
        return None
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        value = value[1:-1].replace("\\'", "'").replace("\\\\", "\\")
    return Path(value)


def check_owner(run_dir: Path, cfg: DictConfig) -> None:
    """A folder that already holds a run, before Hydra touches it: one that another process is
    running is refused; a finished run is not run again (the same settings: it says it is done,
    exit 0; others: refused); an unfinished one resumes only with the settings it was started
    with. `+overwrite=true` reruns a finished run there (or restarts an unfinished one that had
    other settings): the pipeline moves the old results aside."""
    from prune_cli import distributed, rundir

    try:
        again = rundir.overwrite(cfg)
        refused = rundir.busy(run_dir)
        if refused is not None:
            raise refused
        metrics = rundir.finished(run_dir)
        if metrics is not None and not again:
            diff = rundir.differences(run_dir, cfg)
            if diff == []:
                if distributed.is_main():
                    print(rundir.done_line(run_dir, metrics))
                sys.exit(0)
            raise rundir.refusal(run_dir, metrics, diff)
    except ConfigError as err:
        _die(str(err))
    if metrics is None and not again:
        from prune_cli.commits import resume_conflict

        conflict = resume_conflict(run_dir, cfg)
        if conflict:
            _die(f"hydra.run.dir={str(run_dir)!r}: a new folder, or the settings this unfinished run was started "
                 f"with ({conflict}), or +overwrite=true to start it again there")


def sweep_points(args: list[str]) -> list[list[str]]:
    """Every job a `-m` sweep will launch, as its list of overrides: the command line's sweeps
    (`heads=36,18`) crossed with an experiment's `hydra.sweeper.params` (the command line wins
    for a key both give), as Hydra's basic sweeper expands them."""
    import itertools

    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    extra, taken = user_config_dirs(args)
    given = [a for i, a in enumerate(args) if i not in taken and not a.startswith("-")]
    parser = OverridesParser.create()
    parsed = parser.parse_overrides([a for a in given if not a.lstrip("+~").startswith("hydra")])
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    dims = {o.get_key_element(): [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
            for o in parsed if o.is_sweep_override()}
    search = _searchpath(extra)
    try:
        with initialize_config_module(CONF_MODULE, version_base="1.3"):
            base = compose("config", overrides=fixed + search, return_hydra_config=True)
            params = base.hydra.get("sweeper", {}).get("params") or {}
            given_keys = {o.get_key_element() for o in parsed}
            for key, value in params.items():
                if key not in given_keys:  # the command line wins, sweep or not (Hydra's basic sweeper)
                    (o,) = parser.parse_overrides([f"{key}={value}"])
                    dims[key] = ([f"{key}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
                                 else [o.input_line])
    finally:
        GlobalHydra.instance().clear()
    return [fixed + list(point) for point in itertools.product(*dims.values())] if dims else [fixed]


def shared_run_dir(args: list[str]) -> list[str]:
    """Overrides that make the processes of a multi-process launch (torchrun, accelerate launch,
    srun -n N) one run: rank 0's run folder (or sweep folder) for all -- each would otherwise
    stamp its own `${now:}` -- and Hydra's own files (.hydra/, the job log) from rank 0 only."""
    from prune_cli import distributed

    distributed.adopt_slurm_tasks()
    if distributed.world_size() <= 1:
        return []
    distributed.init()
    multirun = any(a in ("-m", "--multirun") for a in args)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    extra = []
    if not any(a.startswith(f"{key}=") for a in args):
        value = _resolved_hydra_key(args, key) if distributed.is_main() else None
        value = distributed.broadcast(value)
        if value is None:
            _die(f"{key}: give it on the command line when several processes run one job "
                 "(it could not be resolved before Hydra starts)")
        extra.append(f"{key}='" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'")
    if not distributed.is_main():
        extra.append("hydra.output_subdir=null")
        if not any(a.startswith("hydra/job_logging=") for a in args):
            extra.append("hydra/job_logging=disabled")
    return extra


def _resolved_hydra_key(args: list[str], key: str) -> str | None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    extra, taken = user_config_dirs(args)
    words = [a for i, a in enumerate(args) if i not in taken and not a.startswith("-")]
    try:  # a sweep's points do not matter: the folder is the sweep's
        fixed = [o.input_line for o in OverridesParser.create().parse_overrides(words) if not o.is_sweep_override()]
    except Exception:  # noqa: BLE001 - bad syntax: validate_sweep / precompose have said so already
        return None
    search = _searchpath(extra)
    try:
        with initialize_config_module(CONF_MODULE, version_base="1.3"):
            cfg = compose("config", overrides=fixed + search, return_hydra_config=True)
            return str(OmegaConf.select(cfg, key))
    except Exception:  # noqa: BLE001 - e.g. a folder pattern that reads ${hydra:...}: only Hydra's run knows it
        return None
    finally:
        GlobalHydra.instance().clear()


def validate_sweep(args: list[str]) -> None:
    """Check every point of a `-m` sweep before anything launches (a bad one is one line, exit 2,
    and no job is submitted), as a single run is checked before it loads a model."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from prune_cli import rundir
    from prune_cli.validate import validate

    try:
        points = sweep_points(args)
    except Exception as err:  # noqa: BLE001 - override syntax: Hydra's first line names it
        _die(str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__)
    extra, _ = user_config_dirs(args)
    search = _searchpath(extra)
    for n, point in enumerate(points):
        try:
            with initialize_config_module(CONF_MODULE, version_base="1.3"):
                cfg = compose("config", overrides=point + search)
            validate(cfg)
            rundir.overwrite(cfg)
        except ConfigError as err:
            varying = [p for p in point if not all(p in other for other in points)]
            _die(f"sweep job {n} ({' '.join(varying or point)}): {err}")
        except Exception as err:  # noqa: BLE001 - a composition error: its first line names the key
            _die(f"sweep job {n}: {str(err).strip().splitlines()[0]}")
        finally:
            GlobalHydra.instance().clear()


@hydra.main(config_path="pkg://prune_cli.conf", config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return _run(cfg, run_dir)
    from prune_cli import rundir, sweep

    overrides = list(hydra_cfg.overrides.task)
    done = sweep.finished(run_dir)
    if done is not None and not rundir.overwrite(cfg):  # the same sweep again: a job that completed is not redone
        diff = rundir.differences(run_dir, cfg, hydra_intact=False)
        rundir.restore_hydra(run_dir)
        if diff:  # the folder's name is the same, the settings are not (an experiment file changed)
            sweep.refused(hydra_cfg.job.num, overrides, rundir.refusal(run_dir, done, diff))
            return None
        print(f"prune-run: {run_dir}: completed before ({done.get('primary_metric')}={done.get('primary')})")
        return done.get("primary")
    from prune_cli.train import Preempted

    try:
        metrics = _run(cfg, run_dir)
    except Preempted:  # checkpointed; submitit requeues the job, which resumes
        sweep.record(run_dir, "preempted", overrides, error="preempted: resumes from its checkpoint when rerun")
        raise
    except (Exception, SystemExit) as err:  # noqa: BLE001 - one job's failure must not sink the sweep
        message = getattr(err, "prune_cli_message", None) or sweep.error_line(err)
        sweep.record(run_dir, "failed", overrides, error=message)
        print(f"prune-run: error: job {hydra_cfg.job.num} ({' '.join(overrides)}): {message}", file=sys.stderr)
        return None
    sweep.record(run_dir, "completed", overrides, primary_metric=metrics["primary_metric"],
                 primary=metrics.get("primary"))
    return metrics.get("primary")


def quiet_libraries(quiet: bool) -> None:
    """`verbose=false`: transformers' load reports and its weight-loading and shard-writing bars,
    datasets' and the Hub's bars and info lines off (their warnings and errors stay); the run's own
    lines and bars are prune-run's."""
    import datasets
    import huggingface_hub.utils
    import transformers

    if quiet:
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        datasets.logging.set_verbosity_warning()
        datasets.disable_progress_bars()
        huggingface_hub.utils.disable_progress_bars()
    else:
        transformers.logging.set_verbosity_warning()
        transformers.logging.enable_progress_bar()
        datasets.enable_progress_bars()
        huggingface_hub.utils.enable_progress_bars()


def _run(cfg: DictConfig, run_dir: Path):
    """Validate and run one job; returns its metrics (a single run returns its primary metric)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from prune_cli import distributed, rundir
    from prune_cli.validate import validate

    distributed.adopt_slurm_tasks()  # a submitit job with tasks_per_node > 1 (main() did not run there)
    distributed.init()
    quiet_libraries(not cfg.get("verbose", False))
    single = HydraConfig.get().mode != RunMode.MULTIRUN
    pipeline = None
    try:
        plan = validate(cfg)
        from prune_cli.pipeline import Pipeline  # after validation: a refusal does not import the model code

        pipeline = Pipeline(cfg, run_dir, plan)
        metrics = pipeline.run()
    except (ConfigError, Diverged) as err:
        if single:
            if isinstance(err, ConfigError) and distributed.is_main():
                rundir.forget(run_dir)  # a refusal leaves no folder behind (nor touches one that held a run)
            _die(str(err), status=2 if isinstance(err, ConfigError) else 1)
        err.prune_cli_message = str(err)
        raise
    primary = metrics.get("primary")
    if pipeline.done_before is not None:
        if distributed.is_main():
            print(rundir.done_line(run_dir, metrics))
        return primary if single else metrics
    if distributed.is_main():
        print(f"prune-run: {cfg.task.name} {metrics['primary_metric']}={primary} "
          f"heads={metrics['heads_kept']}/{metrics['heads_total']}"
              + (f" density={metrics['density']:.4f}" if plan.density is not None else "") + f" -> {run_dir}")
    return primary if single else metrics  # a single run: what optuna-style sweepers optimise


def hub_model_args(args: list[str]) -> list[str]:
    """`model=<owner>/<name>` (a Hub id, not a config option) -> the `hub` option with that id, so
    any Hub model of a declared family is one argument, like the shipped ones."""
    out = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "model" and "/" in value and "," not in value and not value.startswith(("/", ".")):
            out += ["model=hub", f"model.hub={value}", f"model.name={value.rsplit('/', 1)[-1]}"]
        else:
            out.append(arg)
    return out


def main() -> None:
    sys.argv[1:] = hub_model_args(sys.argv[1:])
    args = sys.argv[1:]
    check_group_choices(args)
    check_launcher(args)
    informational = {"--help", "-h", "--hydra-help", "--info", "--version", "--cfg", "-c", "--shell-completion", "-sc"}
    if not any(a.split("=")[0] in informational for a in args):
        if any(a in ("-m", "--multirun") for a in args):
            validate_sweep(args)
        else:
            precompose(args)
    sys.argv += shared_run_dir(args)
    if not any(a in ("-m", "--multirun") for a in args):
        from prune_cli import rundir

        run_dir = given_run_dir(sys.argv[1:])
        if run_dir is not None:  # what Hydra is about to rewrite there, put back if the run is refused
            rundir.remember(run_dir)
        elif not any(a.split("=")[0] in informational for a in args):
            stamped = _resolved_hydra_key(args, "hydra.run.dir")  # (its time is Hydra's own, a moment later)
            if stamped is not None:
                rundir.remember(Path(stamped), stamped=True)
    _hydra_main()
    from prune_cli import sweep

    if sweep._refused:  # jobs whose folders hold a finished run with other settings
        sys.exit(2)
    if sweep._failed:  # the sweep finished, and said which jobs did not
        sys.exit(1)


if __name__ == "__main__":
    main()
