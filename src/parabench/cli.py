"""The `parabench` command: one subcommand per pipeline stage. No logic lives here."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from parabench.common.errors import first_line, one_line
from parabench.config import (
    ConfigError,
    ParabenchError,
    Params,
    RayOptions,
    RunOptions,
    load_params,
    parse_options,
    require_within,
)

app = typer.Typer(
    help="Paraphrase identification benchmark: data, training, tracking, comparison, serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(
    help="MRPC: fetch the raw files, build the GLUE splits, validate them.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
server_app = typer.Typer(
    help="A local MLflow tracking server on PostgreSQL (for concurrent runs): start, stop, status.",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")
results_app = typer.Typer(
    help="Result records (results/): one JSON file per FINISHED run, committed; import them into MLflow.",
    no_args_is_help=True,
)
app.add_typer(results_app, name="results")


# Set to see the traceback of an unexpected error (a bug) instead of its one line.
DEBUG_ENV = "PARABENCH_DEBUG"


def fail(error: ParabenchError) -> None:
    """Print a user-facing error on one line and exit non-zero (2 for a value the user gave, else 1)."""
    typer.echo(f"error: {one_line(error)}", err=True)
    raise typer.Exit(code=error.exit_code)


def command(group: typer.Typer, name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a command whose ParabenchError ends in one line on stderr and its exit code."""

    def register(function: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> None:
            try:
                function(*args, **kwargs)
            except ParabenchError as error:
                fail(error)

        return group.command(name)(run)

    return register


@command(data_app, "fetch")
def data_fetch(
    source: Annotated[
        str | None, typer.Option(help="Folder or base URL holding the three MRPC files.")
    ] = None,
) -> None:
    """Put the raw MRPC files into data/raw, checking each SHA-256."""
    from parabench.data.fetch import fetch_raw

    for path, copied in fetch_raw(load_params(), source):
        typer.echo(f"{'fetched' if copied else 'unchanged'} {path}")


@command(data_app, "prepare")
def data_prepare() -> None:
    """Build data/processed/{train,validation,test}.parquet in the GLUE schema and split."""
    from parabench.data.prepare import prepare_splits

    for split, (rows, positives) in prepare_splits(load_params()).items():
        typer.echo(f"{split}: {rows} rows, {positives} paraphrases")


@command(data_app, "validate")
def data_validate(
    data_dir: Annotated[Path | None, typer.Option(help="Folder with the three parquet splits.")] = None,
) -> None:
    """Run the Great Expectations suite over the splits; non-zero exit when any expectation fails."""
    from parabench.data.validate import validate_splits

    outcome = validate_splits(load_params(), data_dir)
    for failure in outcome.failures:
        typer.echo(f"FAILED {failure}", err=True)
    typer.echo(f"validation result: {outcome.result_file}")
    typer.echo(f"Data Docs: {outcome.data_docs}")
    if not outcome.success:
        typer.echo(
            f"error: {len(outcome.failures)} expectation(s) failed; nothing may be trained on this data",
            err=True,
        )
        raise typer.Exit(code=1)
    typer.echo("all expectations passed")


def option(help_text: str) -> Any:
    """A run option taken as text and checked by config.RunOptions ('auto' = not given)."""
    return typer.Option(help=help_text, show_default=False)


# The options of one training run, shared by `train` and `sweep`; each is checked by config.RunOptions.
SeedOption = Annotated[str | None, option("Random seed, 0..2**32-1 (default: params.yaml train.seed).")]
RecipeOption = Annotated[str | None, option("Recipe from params.yaml (default or 'auto': the model's own).")]
EpochsOption = Annotated[str | None, option("Epochs, ≥ 1 (default: the recipe's).")]
BatchSizeOption = Annotated[str | None, option("Batch size, ≥ 1 (default: the recipe's).")]
LearningRateOption = Annotated[str | None, option("Peak learning rate, > 0 (default: the recipe's).")]
WeightDecayOption = Annotated[str | None, option("AdamW weight decay, ≥ 0 (default: the recipe's).")]
WarmupOption = Annotated[str | None, option("Warm-up share of the steps, in [0, 1) (default: the recipe's).")]
SchedulerOption = Annotated[
    str | None, option("Learning-rate schedule: linear, cosine, … (default: recipe's).")
]
GradNormOption = Annotated[str | None, option("Gradient clipping norm, > 0 (default: the recipe's).")]
TeacherOption = Annotated[
    str | None, option("Distil from this zoo model's cached logits (`parabench teacher`; default: recipe's).")
]
TemperatureOption = Annotated[str | None, option("Distillation temperature, > 0 (default: the recipe's).")]
DistillWeightOption = Annotated[
    str | None, option("Share of the soft (teacher) loss, in [0, 1] (default: the recipe's).")
]
MaxLengthOption = Annotated[
    str | None, option("Tokens per pair, ≥ 1 (default: params.yaml train.max_length).")
]
TrainCapOption = Annotated[str | None, option("Train on at most N ≥ 1 pairs (default: all).")]
EvalCapOption = Annotated[str | None, option("Evaluate at most N ≥ 1 validation/test pairs (default: all).")]
PrecisionOption = Annotated[str | None, option("no | fp16 | bf16 (default: bf16/fp16 on GPUs, else no).")]
AccumulationOption = Annotated[
    str | None, option("Gradient accumulation steps (batch size stays effective).")
]
CheckpointOption = Annotated[str | None, option("Also checkpoint every N optimizer steps (0: epochs only).")]
KeepOption = Annotated[str | None, option("true: keep the checkpoints once the run finished.")]
FourBitOption = Annotated[str | None, option("true: load a LoRA model in 4 bits (QLoRA; CUDA only).")]


def run_options(**given: str | None) -> RunOptions:
    """The options the user gave, checked once (one line naming the option on a violation, exit 2)."""
    names = {name: f"--{name.replace('_', '-')}" for name in RunOptions.model_fields}
    return parse_options(RunOptions, {k: v for k, v in given.items() if v is not None}, names)


@command(app, "train")
def train(
    model: Annotated[str | None, option("Zoo key (see `parabench models`) or a local model folder.")] = None,
    seed: SeedOption = None,
    recipe: RecipeOption = None,
    epochs: EpochsOption = None,
    batch_size: BatchSizeOption = None,
    learning_rate: LearningRateOption = None,
    weight_decay: WeightDecayOption = None,
    warmup_ratio: WarmupOption = None,
    scheduler: SchedulerOption = None,
    max_grad_norm: GradNormOption = None,
    teacher: TeacherOption = None,
    distill_temperature: TemperatureOption = None,
    distill_weight: DistillWeightOption = None,
    max_length: MaxLengthOption = None,
    max_train_samples: TrainCapOption = None,
    max_eval_samples: EvalCapOption = None,
    mixed_precision: PrecisionOption = None,
    gradient_accumulation_steps: AccumulationOption = None,
    checkpoint_every_steps: CheckpointOption = None,
    keep_checkpoints: KeepOption = None,
    load_in_4bit: FourBitOption = None,
) -> None:
    """Fine-tune one model with one seed on validated MRPC; everything is logged to MLflow. Runs on whatever
    the machine has (accelerate); under `torchrun --nproc_per_node N -m parabench train` the N processes
    train one model and log one run. After a crash or kill -9 the same command resumes from the last
    checkpoint."""
    from parabench.common.files import require_writable, write_json
    from parabench.data.validate import require_validated
    from parabench.tracking.client import completing, ui_hint
    from parabench.training.engine import finish_processes
    from parabench.training.plan import plan_run
    from parabench.training.run import train_and_track

    options = run_options(**{k: v for k, v in locals().items() if k in RunOptions.model_fields})
    params = load_params()
    plan = plan_run(params, options, require_validated(params))
    metrics_file = params.path(params.train.reports_dir) / "metrics.json"
    require_writable(metrics_file)
    summary = train_and_track(params, plan, log=typer.echo)
    finish_processes()
    if not summary.main_process:
        return
    with completing(summary.run_id):
        write_json(
            metrics_file,
            {"model": summary.model, "seed": summary.seed, "run_id": summary.run_id, **summary.metrics},
        )
    typer.echo(f"run id: {summary.run_id}")
    typer.echo(
        f"test accuracy: {summary.metrics['test_accuracy']:.4f}  test F1: {summary.metrics['test_f1']:.4f}"
    )
    typer.echo(ui_hint(params, summary.experiment_id, summary.run_id))


@command(app, "teacher")
def teacher(
    model: Annotated[str, typer.Option(help="Zoo key of the fine-tuned teacher.")],
    run_id: Annotated[
        str | None, typer.Option(help="Its run to use (default: its best by validation accuracy).")
    ] = None,
) -> None:
    """Cache a fine-tuned teacher's logits on the train split (params.yaml distill.dir) for distillation:
    students whose recipe names it (e.g. `--recipe distill`) read them instead of running it."""
    from parabench.training.teacher import cache_teacher_logits

    cache_teacher_logits(load_params(), model, run_id, log=typer.echo)


@command(app, "models")
def models() -> None:
    """List the model zoo: family, size class, source, the study's test accuracy, available offline."""
    from parabench.models.zoo import format_table, zoo_table

    typer.echo(format_table(zoo_table(load_params())))


@command(app, "bench")
def bench(
    model: Annotated[str, typer.Option(help="Zoo key to benchmark.")] = "",
    run_id: Annotated[
        str | None, typer.Option(help="Trained run whose weights to use (default: latest).")
    ] = None,
) -> None:
    """Training and inference speed of parabench's paths against the HF Trainer baseline, side by side."""
    from parabench.checks.bench import bench as run_bench

    params = load_params()
    run_bench(params, model or params.train.model, run_id)


@command(app, "gpu-check")
def gpu_check(
    minilm: Annotated[
        Path | None, typer.Option(help="all-MiniLM-L6-v2 folder (default: the embedded wheel's).")
    ] = None,
    epochs: Annotated[int, typer.Option(help="Epochs per model.", min=1)] = 1,
) -> None:
    """On a CUDA machine: tiny-bert and all-MiniLM-L6-v2 fine-tuned in bf16, GPU pairs/s, resume after a stop;
    writes reports/gpu_check.json (params.yaml bench.gpu_output)."""
    from parabench.checks.gpu import gpu_check as run_check

    params = load_params()
    require_within(params.limits, "epochs", epochs, "--epochs")
    report = run_check(params, minilm, epochs, log=typer.echo)
    typer.echo(json.dumps(report, indent=2))


def chosen_models(value: str | None, params: Params) -> list[str] | None:
    """--models of report/promote: None (every model swept) when not given, else the checked keys."""
    from parabench.study.sweep import parse_models

    return None if value is None else parse_models(value, params)


def main() -> None:
    """Entry point: a mistake or failure is one line on stderr and a non-zero exit, never a traceback."""
    from parabench.tracking.client import SQLITE_LOCKED_HINT, RunKilled

    try:
        code = app(standalone_mode=False)
    except typer.Abort:
        sys.exit(130)
    except typer.TyperException as error:  # unknown option, missing argument, bad value: exit 2 as click does
        context = getattr(error, "ctx", None)
        where = f"{context.command_path}: " if context is not None else ""
        message = error.format_message() if hasattr(error, "format_message") else str(error)
        print(f"error: {where}{' '.join(message.split())}", file=sys.stderr)
        sys.exit(getattr(error, "exit_code", 2))
    except OSError as error:  # a full disk, a folder it may not write: one line naming the cause
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        sys.exit(1)
    except (KeyboardInterrupt, RunKilled):
        print(
            "interrupted: the run was marked KILLED; run the same command again to start it over",
            file=sys.stderr,
        )
        sys.exit(130)
    except Exception as error:
        if "database is locked" in str(error):
            print(f"error: {SQLITE_LOCKED_HINT}", file=sys.stderr)
            sys.exit(1)
        if os.environ.get(DEBUG_ENV):
            raise
        print(
            f"error: unexpected {type(error).__name__}: {one_line(first_line(error))} (a parabench bug: "
            f"please report it; {DEBUG_ENV}=1 shows the traceback)",
            file=sys.stderr,
        )
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


ModelsOption = Annotated[
    str | None, typer.Option(help="Comma list of zoo keys (default: params.yaml sweep.models).")
]
SweptModelsOption = Annotated[
    str | None, typer.Option(help="Comma list of zoo keys (default: every model swept on the data version).")
]
DataVersionOption = Annotated[
    str | None, typer.Option(help="Data version to use (default: that of the newest sweep of the models).")
]


AddressOption = Annotated[
    str | None, option("Ray: local (start one here), auto (the running cluster) or ray://HOST:10001.")
]
CpusOption = Annotated[str | None, option("CPUs one run reserves (default: params.yaml ray.cpus_per_run).")]
GpusOption = Annotated[
    str | None, option("GPUs one run reserves, fractions allowed (default: ray.gpus_per_run where GPUs).")
]
RetriesOption = Annotated[str | None, option("Tries again a failed run N times (default: ray.max_retries).")]
StartServerOption = Annotated[
    str | None, option("true: with SQLite and runs side by side, start `parabench server` and log there.")
]


def ray_options(
    address: str | None,
    cpus_per_run: str | None,
    gpus_per_run: str | None,
    max_retries: str | None,
    start_server: str | None,
) -> RayOptions:
    """The Ray options the user gave, checked once (one line naming the option, exit 2)."""
    given = {k: v for k, v in locals().items() if v is not None}
    names = {name: f"--{name.replace('_', '-')}" for name in RayOptions.model_fields}
    return parse_options(RayOptions, given, names)


@command(app, "sweep")
def sweep(
    models: ModelsOption = None,
    seeds: Annotated[
        str | None,
        option("N = the first N of params.yaml sweep.seeds, or a comma list of seeds (default: all)."),
    ] = None,
    recipe: RecipeOption = None,
    epochs: EpochsOption = None,
    batch_size: BatchSizeOption = None,
    learning_rate: LearningRateOption = None,
    weight_decay: WeightDecayOption = None,
    warmup_ratio: WarmupOption = None,
    scheduler: SchedulerOption = None,
    max_grad_norm: GradNormOption = None,
    max_length: MaxLengthOption = None,
    max_train_samples: TrainCapOption = None,
    max_eval_samples: EvalCapOption = None,
    mixed_precision: PrecisionOption = None,
    gradient_accumulation_steps: AccumulationOption = None,
    checkpoint_every_steps: CheckpointOption = None,
    keep_checkpoints: KeepOption = None,
    engine: Annotated[
        str, typer.Option(help="local: one run after another here; ray: runs as Ray tasks, side by side.")
    ] = "local",
    address: AddressOption = None,
    cpus_per_run: CpusOption = None,
    gpus_per_run: GpusOption = None,
    max_retries: RetriesOption = None,
    start_server: StartServerOption = None,
) -> None:
    """Fine-tune every model with every seed: an MLflow parent run per model, a nested run per seed.
    Seeds that already have a FINISHED run with the same recipe and data are skipped. With --engine ray the
    runs fan out over a local Ray or a cluster (--address), as many at once as their reservations allow."""
    from parabench.study.sweep import parse_models, parse_seeds, run_sweep, run_sweep_on_ray

    options = run_options(**{k: v for k, v in locals().items() if k in RunOptions.model_fields})
    given = ray_options(address, cpus_per_run, gpus_per_run, max_retries, start_server)
    params = load_params()
    chosen, seed_list = parse_models(models, params), parse_seeds(seeds, params)
    if engine == "ray":
        sweeps = run_sweep_on_ray(params, chosen, seed_list, options, given, log=typer.echo)
    elif engine == "local":
        if given != RayOptions():
            raise ConfigError(
                "--address, --cpus-per-run, --gpus-per-run, --max-retries and "
                "--start-server are options of --engine ray"
            )
        sweeps = run_sweep(params, chosen, seed_list, options, log=typer.echo)
    else:
        raise ConfigError(f"--engine {engine!r}: use local or ray")
    for model_sweep in sweeps:
        typer.echo(
            f"{model_sweep.model}: seeds {', '.join(map(str, model_sweep.runs))} FINISHED; "
            f"parent run {model_sweep.parent.info.run_id}"
        )


@command(app, "tune")
def tune(
    model: Annotated[str | None, option("Zoo key to tune (default: params.yaml train.model).")] = None,
    trials: Annotated[str | None, option("Trials in all (default: params.yaml tune.trials).")] = None,
    max_epochs: Annotated[
        str | None, option("Most epochs a trial may sample, ASHA's horizon (default: tune.max_epochs).")
    ] = None,
    time_budget_s: Annotated[
        str | None, option("Stop starting and running trials after this many seconds (default: none).")
    ] = None,
    seed: SeedOption = None,
    recipe: Annotated[
        str | None, option("Recipe the unsearched fields come from (default: model's own).")
    ] = None,
    max_train_samples: TrainCapOption = None,
    max_eval_samples: EvalCapOption = None,
    max_length: MaxLengthOption = None,
    mixed_precision: PrecisionOption = None,
    address: AddressOption = None,
    cpus_per_run: CpusOption = None,
    gpus_per_run: GpusOption = None,
    max_retries: RetriesOption = None,
    start_server: StartServerOption = None,
) -> None:
    """Search the model's recipe with Ray Tune (Optuna's sampler over params.yaml tune.space, ASHA stopping
    on the per-epoch validation accuracy); the best by validation goes to reports/tune/<model>.json, which
    `--recipe tune:<model>` uses. Every trial is a nested MLflow run under a <model>-tune parent."""
    from parabench.config import TuneLimits
    from parabench.study.tune import TuneSettings, run_tune

    options = run_options(**{k: v for k, v in locals().items() if k in RunOptions.model_fields})
    given = ray_options(address, cpus_per_run, gpus_per_run, max_retries, start_server)
    limits = parse_options(
        TuneLimits,
        {
            k: v
            for k, v in {"trials": trials, "max_epochs": max_epochs, "time_budget_s": time_budget_s}.items()
            if v is not None
        },
        {"trials": "--trials", "max_epochs": "--max-epochs", "time_budget_s": "--time-budget-s"},
    )
    params = load_params()
    require_within(params.limits, "trials", limits.trials, "--trials")
    require_within(params.limits, "epochs", limits.max_epochs, "--max-epochs")
    settings = TuneSettings(
        trials=limits.trials or params.tune.trials,
        max_epochs=limits.max_epochs or params.tune.max_epochs,
        time_budget_s=limits.time_budget_s,
    )
    document = run_tune(params, options.model or params.train.model, settings, options, given, log=typer.echo)
    typer.echo(json.dumps(document, indent=2))


@command(app, "report")
def report(models: SweptModelsOption = None, data_version: DataVersionOption = None) -> None:
    """The study's tables from the sweeps in MLflow, with confidence intervals, McNemar tests, failed-seed
    flags and plots: reports/results.{md,csv,json} and reports/plots/."""
    from parabench.study.report import build_report

    params = load_params()
    written = build_report(params, chosen_models(models, params), data_version, log=typer.echo)
    for path in written.paths:
        typer.echo(f"wrote {path}")


@command(results_app, "import")
def results_import() -> None:
    """Recreate every record of params.yaml results.dir as a FINISHED run in the tracking store (params,
    curves, metrics, tagged `imported_from`; no model weights), so the MLflow UI compares them with new runs.
    A record already there (its own run, or imported before) is skipped."""
    from parabench.results.store import import_records

    imported, present = import_records(load_params(), log=typer.echo)
    typer.echo(f"{imported} record(s) imported, {present} already in the tracking store")


@command(app, "promote")
def promote(models: SweptModelsOption = None, data_version: DataVersionOption = None) -> None:
    """Register each size class's best model (by mean validation accuracy) as parabench-<class>@champion."""
    from parabench.study.promote import promote as promote_models

    params = load_params()
    state = promote_models(params, chosen_models(models, params), data_version, log=typer.echo)
    typer.echo("registry:")
    for line in state:
        typer.echo(f"  {line}")


ModelUriOption = Annotated[
    str | None, typer.Option("--model", help="Model URI (default: params.yaml serve.model_uri).")
]


@command(app, "predict")
def predict(
    sentences: Annotated[list[str] | None, typer.Argument(help="sentence1 and sentence2.")] = None,
    input_csv: Annotated[
        Path | None, typer.Option("--input", help="CSV file with columns sentence1 and sentence2.")
    ] = None,
    model: ModelUriOption = None,
) -> None:
    """Label sentence pairs (1 = paraphrase) with their paraphrase probability; prints CSV."""
    from parabench.serving.predict import pairs_from, predict_pairs

    params = load_params()
    pairs = pairs_from(params, sentences, input_csv)
    table = predict_pairs(params, model or params.serve.model_uri, pairs)
    typer.echo(table.to_csv(index=False), nl=False)


@command(app, "serve")
def serve(
    model: ModelUriOption = None,
    host: Annotated[str | None, typer.Option(help="Interface (default: params.yaml serve.host).")] = None,
    port: Annotated[
        int | None, typer.Option(help="Port, 1..65535 (default: params.yaml serve.port).", min=1, max=65535)
    ] = None,
) -> None:
    """Serve the model over HTTP with `mlflow models serve` in this environment:
    POST /invocations {"dataframe_records": [{"sentence1": "...", "sentence2": "..."}]}. Workers, request
    timeout and request limits come from params.yaml `serve:`."""
    import os

    from parabench.serving.predict import (
        REQUEST_TIMEOUT,
        SERVING_MODEL_CONFIG,
        model_flavors,
        pickle_warning,
        require_listenable,
        serve_command,
    )

    params = load_params()
    settings = params.serve
    model_uri = model or settings.model_uri
    host, port = host if host is not None else settings.host, port or settings.port
    require_listenable(host, port)
    flavors = model_flavors(params, model_uri)
    command, env = serve_command(params, model_uri, host, port)
    if warning := pickle_warning(model_uri, flavors):
        typer.echo(warning, err=True)
    typer.echo(" ".join(f"{name}={env[name]}" for name in (REQUEST_TIMEOUT, SERVING_MODEL_CONFIG)))
    typer.echo(" ".join(command))
    os.execvpe(command[0], command, env)


@command(server_app, "start")
def server_start(
    database_url: Annotated[
        str | None,
        typer.Option(help="An existing PostgreSQL, postgresql+psycopg://USER@HOST:PORT/DB, not a local one."),
    ] = None,
) -> None:
    """Start PostgreSQL and `mlflow server` on 127.0.0.1 (params.yaml tracking_server); idempotent."""
    from parabench.tracking.server import start

    state = start(load_params(), database_url)
    verb = "already running" if state.get("already_running") else "started"
    typer.echo(f"MLflow tracking server {verb} at {state['tracking_uri']} (database {state['database_url']})")
    typer.echo(f"use it with: export MLFLOW_TRACKING_URI={state['tracking_uri']}")


@command(server_app, "stop")
def server_stop() -> None:
    """Stop the tracking server and the PostgreSQL it started."""
    from parabench.tracking.server import stop

    stopped = stop(load_params())
    typer.echo("tracking server stopped" if stopped else "no tracking server was running")


@command(server_app, "status")
def server_status() -> None:
    """Print whether the tracking server answers; exit 1 when it does not."""
    from parabench.tracking.server import status

    state = status(load_params())
    typer.echo(f"{state['tracking_uri']}: {'up' if state['healthy'] else 'down'}")
    if not state["healthy"]:
        raise typer.Exit(code=1)


@command(app, "loadtest")
def loadtest(
    model: Annotated[
        str | None, typer.Option(help="Model URI to serve (default: params.yaml serve.model_uri).")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="Load a server already running here instead (localhost).")
    ] = None,
    requests: Annotated[
        int | None, typer.Option(help="Requests in all (default: params.yaml loadtest).")
    ] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight at once.")] = None,
) -> None:
    """Bounded load test of the served model on localhost: valid and malformed requests; prints p50/p95
    latency, requests/s and status counts; exit 1 on any 5xx, lost connection or unexpected answer."""
    from parabench.serving.loadtest import run_loadtest

    summary = run_loadtest(load_params(), model, url, requests, concurrency)
    typer.echo(
        f"{summary['requests']} requests ({summary['valid_requests']} valid), "
        f"concurrency {summary['concurrency']}: "
        f"{summary['requests_per_second']:.1f} req/s ({summary['pairs_per_second']:.1f} pairs/s), "
        f"p50 {summary['latency_ms_p50']:.0f} ms, "
        f"p95 {summary['latency_ms_p95']:.0f} ms; statuses {summary['status_counts']}; "
        f"5xx {summary['server_errors_5xx']}, connection errors {summary['connection_errors']}, "
        f"unexpected {summary['unexpected_answers']}; still answering: {summary['still_answering']}"
    )
    typer.echo(f"report: {summary['report_file']}")
    failed = summary["server_errors_5xx"] or summary["connection_errors"] or summary["unexpected_answers"]
    if failed or not summary["still_answering"]:
        raise typer.Exit(code=1)


@command(app, "scaling")
def scaling() -> None:
    """Runs per hour of `sweep --engine ray` with 1 and 2 runs at a time on this machine, measured in one go
    (params.yaml scaling); writes reports/scaling.{json,md}."""
    from parabench.checks.scaling import run_scaling

    report = run_scaling(load_params(), log=typer.echo)
    typer.echo(json.dumps(report, indent=2))


@command(app, "reliability")
def reliability() -> None:
    """Run every reliability scenario (concurrent trainings on PostgreSQL and SQLite, kill -9, concurrent
    promotes, load test, tampered data) in a throw-away copy of the project; writes reports/reliability/."""
    from parabench.checks.reliability import run_all

    report = run_all(load_params(), log=typer.echo)
    typer.echo(json.dumps(report, indent=2))
