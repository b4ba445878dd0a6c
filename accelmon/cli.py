"""The ``accelmon`` command: thin verbs over the library.

User mistakes become one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from accelmon import __version__
from accelmon.analytics.window import parse_time
from accelmon.collector.agent.main import NVML, run_agent
from accelmon.config import DEFAULT_CONFIG_NAME, Config, ConfigError, load, parse_duration
from accelmon.errors import UserError
from accelmon.spark.cli import spark_app

if TYPE_CHECKING:
    from accelmon.store import Store

app = typer.Typer(
    name="accelmon",
    help="GPU utilization and NUMA-placement analytics for VMware vSphere estates.\n\n"
    "Collects from vCenter and from guest NVML agents into a DuckDB/Parquet store, "
    "exports Prometheus metrics, and reports which accelerators to consolidate.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DEFAULT_DATA_DIR = "./accelmon-data"


class State:
    data_dir_opt: Path | None = None
    config_path: Path | None = None
    verbose: int = 0
    _config: Config | None = None

    def config(self) -> Config:
        if self._config is None:
            path = self.config_path
            if path is None and Path(DEFAULT_CONFIG_NAME).is_file():
                path = Path(DEFAULT_CONFIG_NAME)
            self._config = load(path)
        return self._config

    def data_dir(self) -> Path:
        if self.data_dir_opt is not None:
            return self.data_dir_opt
        cfg = self.config()
        return cfg.data_dir if cfg.data_dir is not None else Path(DEFAULT_DATA_DIR)

    def store(self, *, read_only_ok: bool = False) -> Store:
        # lazy: pyarrow/duckdb load only for the verbs that use the store (a guest agent runs without them)
        from accelmon.store import Store

        cfg = self.config()
        return Store(self.data_dir(), gc_grace_seconds=cfg.retention.gc_grace, read_only_ok=read_only_ok,
                     shard=cfg.shard)


state = State()


def fail(msg: str, code: int = 2) -> NoReturn:
    typer.echo(f"accelmon: {msg}", err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"accelmon {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", envvar="ACCELMON_DATA_DIR", help="Where everything is stored "
                     "(default: data_dir from the config, else ./accelmon-data).", show_default=False),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", envvar="ACCELMON_CONFIG",
                     help=f"Config file (default: ./{DEFAULT_CONFIG_NAME} if present).", show_default=False),
    ] = None,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-vv: debug).")] = 0,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    state.data_dir_opt = data_dir
    state.config_path = config
    state.verbose = verbose
    state._config = None


def _setup_logging(cfg: Config | None = None) -> None:
    level = {0: None, 1: logging.INFO}.get(state.verbose, logging.DEBUG)
    if level is None:
        level = getattr(logging, (cfg.log_level if cfg else "info").upper())
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _delegate(module: str, func: str, what: str) -> Callable[..., int]:
    """Import the library function behind a verb; verbs whose work has not landed say so honestly."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            fail(f"{what}: not implemented yet", 2)
        raise
    fn = getattr(mod, func, None)
    if fn is None:
        fail(f"{what}: not implemented yet", 2)
    return fn  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- verbs
@app.command()
def run(
    once: Annotated[bool, typer.Option("--once", help="Poll every source once, flush and exit.")] = False,
    web_config: Annotated[Path | None, typer.Option(
        "--web.config.file", help="Prometheus web config file (TLS, basic auth) for /metrics "
        "(default: exporter.web_config_file).", show_default=False)] = None,
) -> None:
    """Run the daemon: poll vCenter and guest agents, store samples, serve /metrics, write the daily report."""
    cfg = state.config()
    if web_config is not None:
        if not web_config.is_file():
            fail(f"--web.config.file: file not found: {web_config}")
        cfg.exporter.web_config_file = web_config
    _setup_logging(cfg)
    fn = _delegate("accelmon.daemon.main", "run_daemon", "run")
    raise typer.Exit(fn(cfg, state.store(), once=once))


@app.command()
def agent(
    simulate: Annotated[str | None, typer.Option(
        "--simulate", help="Use the simulated NVML: a preset name or a simulation spec file (no GPU needed).")] = None,
    listen: Annotated[str | None, typer.Option("--listen", help="host:port to serve /metrics on "
                                               "(default: agent.listen from the config, 0.0.0.0:9835).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Poll once, print the metrics and exit.")] = False,
    web_config: Annotated[Path | None, typer.Option(
        "--web.config.file", help="Prometheus web config file (TLS, basic auth) for /metrics "
        "(default: agent.web_config_file).", show_default=False)] = None,
) -> None:
    """Run the guest agent: read NVML in a GPU VM and serve busy/idle, PCIe, NVLink and energy counters."""
    cfg = state.config()
    _setup_logging(cfg)
    if web_config is not None and not web_config.is_file():
        fail(f"--web.config.file: file not found: {web_config}")
    if simulate is None:
        backend = NVML
    else:
        from accelmon.demo.simnvml import simulated_backend  # lazy: the simulator, for --simulate only

        backend = simulated_backend(simulate)
    raise typer.Exit(run_agent(cfg, backend=backend, listen=listen, once=once, web_config_file=web_config))


@app.command()
def report(
    since: Annotated[str | None, typer.Option(
        "--since", help='Window ending now: "7d", "24h", or "all" (default: thresholds.window, 7d).')] = None,
    from_: Annotated[str | None, typer.Option("--from", help="Window start (ISO 8601).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Window end (ISO 8601).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output directory "
                                             "(default: <data-dir>/reports/<time>).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the findings JSON to stdout.")] = False,
) -> None:
    """Write the consolidation report (report.html, findings.csv, findings.json) from stored samples."""
    if since is not None and (from_ or to):
        fail("--since cannot be combined with --from/--to")
    cfg = state.config()
    _setup_logging(cfg)
    fn = _delegate("accelmon.report.cli", "run_report", "report")
    raise typer.Exit(fn(state.store(), cfg, since=since, from_=parse_time(from_, "--from"),
                        to=parse_time(to, "--to"), out_dir=out, json_out=json_out,
                        progress=sys.stderr.isatty()))


@app.command()
def plan(
    fmt: Annotated[str, typer.Option("--format", "-f", help="json (the plan document) or powercli (a .ps1 "
                                     "script to review and run by hand).")] = "json",
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file (default: stdout).")] = None,
    since: Annotated[str | None, typer.Option(
        "--since", help='Window ending now: "7d", "24h", or "all" (default: thresholds.window, 7d).')] = None,
    from_: Annotated[str | None, typer.Option("--from", help="Window start (ISO 8601).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Window end (ISO 8601).")] = None,
) -> None:
    """Write the consolidation plan alone: vSphere steps with preconditions and API calls. accelmon executes nothing."""
    if fmt not in ("json", "powercli"):
        fail(f"--format: must be json or powercli, not {fmt!r}")
    if since is not None and (from_ or to):
        fail("--since cannot be combined with --from/--to")
    cfg = state.config()
    _setup_logging(cfg)
    fn = _delegate("accelmon.report.plan", "run_plan", "plan")
    raise typer.Exit(fn(state.store(), cfg, fmt=fmt, out=out, since=since, from_=parse_time(from_, "--from"),
                        to=parse_time(to, "--to")))


@app.command()
def sql(
    query: Annotated[str | None, typer.Argument(help="SQL to run; omit for an interactive session.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="Output format: table, csv or json.")] = "table",
) -> None:
    """Run DuckDB SQL over the store (tables and views: see docs/schema.md)."""
    # lazy: pyarrow/duckdb load only for the verbs that use the store (a guest agent runs without them)
    from accelmon import sqlshell

    if fmt not in ("table", "csv", "json"):
        fail(f"--format: must be table, csv or json, not {fmt!r}")
    store = state.store(read_only_ok=True)  # read-only: works on a read-only data dir too
    if query is None:
        raise typer.Exit(sqlshell.interactive(store))
    raise typer.Exit(sqlshell.run_query(store, query, fmt))


@app.command("import-trace")
def import_trace(
    files: Annotated[list[Path], typer.Argument(help="CSV file(s): timestamp,gpu,util_percent[,memory_used_bytes].")],
    force: Annotated[bool, typer.Option("--force", help="Import a file again even if it was imported before.")] = False,
) -> None:
    """Import GPU utilization traces (CSV) as GPU samples; all or nothing per file, a file
    already imported (same content) adds nothing."""
    # lazy: pyarrow/duckdb load only for the verbs that use the store (a guest agent runs without them)
    from accelmon import importer

    store = state.store()
    code = 0
    try:
        for msg in importer.recover(store):  # imports a kill -9 interrupted
            typer.echo(f"accelmon: {msg}", err=True)
    except UserError as e:
        fail(str(e), e.exit_code)
    for f in files:
        try:
            res = importer.import_trace(store, f, force=force, progress=importer.stderr_progress(str(f)))
        except importer.TraceError as e:
            for line in e.problems:
                typer.echo(line, err=True)
            typer.echo(f"accelmon: {f}: nothing imported", err=True)
            code = 1
            continue
        except UserError as e:
            typer.echo(f"accelmon: {e}", err=True)
            code = max(code, e.exit_code)
            continue
        typer.echo(importer.summary(res))
    raise typer.Exit(code)


@app.command()
def demo(
    duration: Annotated[float | None, typer.Option("--duration", help="Stop after this many seconds "
                                                   "(default: run until Ctrl-C).")] = None,
    vms: Annotated[int, typer.Option("--vms", help="VMs in the simulated estate.")] = 60,
    mail_to: Annotated[str | None, typer.Option("--mail-to", help="Also write the report mail to this address and "
                                                "the owner digests as .eml files under <data-dir>/mail/ (a dry run: "
                                                "nothing is sent).")] = None,
) -> None:
    """Run a simulated GPU estate end to end: vCenter simulator, GPU agents, daemon, Prometheus, report."""
    _setup_logging()
    fn = _delegate("accelmon.demo.runner", "run_demo", "demo")
    raise typer.Exit(fn(state.data_dir(), duration=duration, vms=vms, mail_to=mail_to))


@app.command()
def mail(
    what: Annotated[str, typer.Argument(help="report (write the report and mail it to mail.report_to) or digests "
                                        "(mail each owner whose GPUs stayed flagged mail.digest_after_days days).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Write .eml files (mail.dry_run_dir, else "
                                          "<data-dir>/mail/<time>/) instead of sending.")] = False,
) -> None:
    """Mail the daily report or the per-owner digests (SMTP settings: [mail] in accelmon.toml)."""
    cfg = state.config()
    _setup_logging(cfg)
    fn = _delegate("accelmon.mail.cli", "run_mail", "mail")
    raise typer.Exit(fn(state.store(), cfg, what, dry_run=dry_run))


@app.command("check-config")
def check_config(
    file: Annotated[Path, typer.Argument(help="The accelmon.toml to validate.")],
) -> None:
    """Validate a config file: every problem on its own line (file: key: problem), exit 2 if any."""
    cfg = load(file)
    typer.echo(
        f"{file}: ok ({len(cfg.vcenter)} vCenter(s), {len(cfg.agents.static)} static agent(s), "
        f"agent discovery {'on' if cfg.agents.discovery else 'off'}, "
        f"underutilized below {cfg.thresholds.underutilized_percent:g} %)"
    )


@app.command()
def backfill(
    prometheus: Annotated[str, typer.Option("--prometheus", help="Prometheus base URL with DCGM series.")],
    since: Annotated[str, typer.Option("--since", help='How far back, e.g. "7d".')] = "7d",
    step: Annotated[str, typer.Option("--step", help='Resolution, e.g. "60s".')] = "60s",
) -> None:
    """Import history (DCGM utilization, power, framebuffer) from a Prometheus server."""
    try:
        since_s, step_s = parse_duration(since), parse_duration(step)
    except ValueError as e:
        fail(f"--since/--step: {e}")
    fn = _delegate("accelmon.collector.prometheus_backfill", "run_backfill", "backfill")
    raise typer.Exit(fn(state.store(), prometheus, since_s, step_seconds=step_s, progress=sys.stderr.isatty()))


@app.command()
def compact(
    gc: Annotated[bool, typer.Option("--gc/--no-gc", help="Also delete retired files past the grace period.")] = True,
) -> None:
    """Merge small Parquet files into one sorted file per table and day (the daemon does this hourly)."""
    # lazy: pyarrow/duckdb load only for the verbs that use the store (a guest agent runs without them)
    from accelmon.store.compaction import CompactionFailure

    store = state.store()
    failures: list[CompactionFailure] = []
    try:
        results = store.compact(failures=failures)
        for r in results:
            typer.echo(f"{r.table} {r.partition}: {r.files_in} files -> 1 ({r.rows} rows, {r.bytes_out} bytes)")
    finally:
        if gc:
            store.gc()
    for f in failures:
        hint = "; `accelmon store check --repair` moves it aside" if f.bad_file else ""
        typer.echo(f"accelmon: compact: {f.table} {f.partition}: {f.error}{hint}", err=True)
    if not results and not failures:
        typer.echo("nothing to compact")
    raise typer.Exit(1 if failures else 0)


@app.command()
def rollup(
    from_: Annotated[str | None, typer.Option("--from", help="First UTC day to roll up (ISO 8601 date).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="Last UTC day to roll up (ISO 8601 date).")] = None,
) -> None:
    """Write hourly per-GPU rollups (gpu_rollup_hour) of the stored samples; re-running a day replaces it."""
    # lazy: polars/pyarrow/duckdb load only for the verbs that use the store (a guest agent runs without them)
    from accelmon.analytics import rollup as rollup_mod

    days = []
    for value, option in ((from_, "--from"), (to, "--to")):
        try:
            days.append(None if value is None else dt.date.fromisoformat(value[:10]))
        except ValueError:
            fail(f"{option}: not an ISO 8601 date: {value!r}")
    if days[0] is not None and days[1] is not None and days[0] > days[1]:
        fail(f"--from ({days[0]}) must not be after --to ({days[1]})")
    store = state.store()
    done = rollup_mod.run(store, from_=days[0], to=days[1])
    for day, n in done.items():
        typer.echo(f"gpu_rollup_hour {day}: {n} rows")
    if not done:
        typer.echo("no samples to roll up")
    store.ensure_catalog()


store_app = typer.Typer(help="Check and repair the store (unreadable files, leftovers of a kill).",
                        no_args_is_help=True)
app.add_typer(store_app, name="store")
app.add_typer(spark_app, name="spark")  # accelmon/spark/cli.py: pyspark is imported only when a spark verb runs


@store_app.command("check")
def store_check(
    repair: Annotated[bool, typer.Option("--repair", help="Move unreadable files to <data-dir>/quarantine/, "
                                         "remove leftovers, rebuild the catalog.")] = False,
) -> None:
    """List unreadable Parquet files and leftovers of a kill (exit 1 if any); --repair fixes them."""
    # lazy: pyarrow/duckdb load only for the verbs that use the store (a guest agent runs without them)
    from accelmon.store import check

    store = state.store(read_only_ok=not repair)
    res = check.check(store)
    for b in res.bad_files:
        typer.echo(f"{b.shown(store)}: unreadable Parquet file: {b.reason}")
    for link in res.leftover_links:
        typer.echo(f"{link}: leftover of an interrupted partition swap")
    if not repair:
        typer.echo(f"{res.files_checked} files checked, {len(res.bad_files)} unreadable, "
                   f"{len(res.leftover_links)} leftover(s)" + ("" if res.ok else "; repair: accelmon store check --repair"))
        raise typer.Exit(0 if res.ok else 1)
    fixed = store.repair(res)
    for b, dest in zip(res.bad_files, fixed.quarantined, strict=True):
        typer.echo(f"{b.shown(store)}: moved to {dest}")
    for link in fixed.links_removed:
        typer.echo(f"{link}: removed")
    typer.echo(f"{res.files_checked} files checked, {len(fixed.quarantined)} quarantined, "
               f"{len(fixed.links_removed)} leftover(s) removed; catalog "
               + ("rebuilt" if fixed.catalog_written else "held open by another process, not rewritten"))


@app.command()
def schema() -> None:
    """Print the store schema (tables, columns with units, views) as Markdown."""
    # lazy: pyarrow/duckdb load only for the verbs that use the store (a guest agent runs without them)
    from accelmon.store.schema import render_markdown

    typer.echo(render_markdown(), nl=False)


def main(argv: list[str] | None = None) -> None:
    try:
        rc = app(args=argv, standalone_mode=False)
    except ConfigError as e:
        for line in e.lines:
            typer.echo(line, err=True)
        sys.exit(2)
    except UserError as e:
        typer.echo(f"accelmon: {e}", err=True)
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Abort:
        sys.exit(130)
    except Exception as e:  # usage errors (click's, vendored by typer) and store errors
        # lazy: pyarrow/duckdb load only for the verbs that use the store (a guest agent runs without them)
        from accelmon.store.layout import StoreError

        show, code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        if isinstance(e, StoreError):
            typer.echo(f"accelmon: {e}", err=True)
            sys.exit(2)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
