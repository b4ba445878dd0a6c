"""The daemon: sources on APScheduler, the write buffer, store jobs, /metrics.

Executors keep kinds of work from starving each other: vCenter jobs run in their own small
pool, agent/exporter scrapes in another, housekeeping (flush, compaction, retention,
findings, report) in a third. Every job has ``max_instances=1`` and ``coalesce=True``: a slow
vCenter poll is never run twice at once and never stalls an agent scrape.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler

from accelmon.collector import registry
from accelmon.collector.base import CollectResult, Source
from accelmon.collector.discovery import agent_targets
from accelmon.config import Config
from accelmon.daemon import housekeeping, vmotion_history
from accelmon.daemon.buffer import DirectSink, WriteBuffer
from accelmon.daemon.pool import DaemonPoolExecutor
from accelmon.daemon.runner import JobRunner, SourceRunner, summarize
from accelmon.daemon.state import DaemonState
from accelmon.errors import UserError
from accelmon.report.schedule import add_report_job
from accelmon.store.staging import recover as recover_staged_imports
from accelmon.store.writer import Store

log = logging.getLogger("accelmon.daemon")


class _QuietScheduler(logging.Filter):
    """APScheduler warns on every skipped run of a busy job; we count those instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("maximum number of running instances reached" in msg or "was missed by" in msg)


for _name in ("apscheduler.scheduler", "apscheduler.executors.default", "apscheduler.executors.sources",
              "apscheduler.executors.vcenter", "apscheduler.executors.housekeeping"):
    logging.getLogger(_name).addFilter(_QuietScheduler())
logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
logging.getLogger("apscheduler.scheduler").setLevel(logging.WARNING)


def _spread(key: str, interval_s: float) -> float:
    """A stable offset in [0, interval) so 2,000 agents do not all fire in the same second."""
    return (zlib.crc32(key.encode()) % 10_000) / 10_000 * interval_s


class Daemon:
    def __init__(self, cfg: Config, store: Store, *, source_workers: int = 32) -> None:
        registry.check(cfg)
        self.cfg = cfg
        self.store = store
        store.gc_grace_seconds = cfg.retention.gc_grace
        self.state = DaemonState(stale_after_s=max(3 * cfg.agents.scrape_interval, 30.0))
        self.state.data_dir = str(store.root)
        self.buffer = WriteBuffer(
            store, on_flushed=self._on_flushed, on_error=self._on_store_error, on_dropped=self._on_dropped,
            on_invalid=self._on_invalid,
        )
        self._invalid_seen: set[str] = set()
        self.direct = DirectSink(store, on_flushed=self._on_flushed, on_error=self._on_store_error)
        self.source_workers = source_workers
        self.runners: dict[str, SourceRunner] = {}
        self._sources: list[Source] = []
        self._agent_runners: dict[str, SourceRunner] = {}
        self._lock = threading.RLock()
        self.scheduler: BackgroundScheduler | None = None
        self._stopping = threading.Event()
        self._store_failing_since = 0.0
        self._inventory_version = -1
        self.skipped_runs = 0
        self.jobs: dict[str, JobRunner] = {}

    # ------------------------------------------------------------------ store callbacks
    def _on_flushed(self, table: str, n: int) -> None:
        st = self.state.store
        st.rows_written_total[table] = st.rows_written_total.get(table, 0) + n
        if not st.writable:
            st.writable = True
            down = time.time() - self._store_failing_since
            log.info("store %s: writing again after %.0f s; buffered rows are being written", self.store.root, down)

    def _on_store_error(self, reason: str, e: BaseException) -> None:
        st = self.state.store
        st.write_errors_total[reason] = st.write_errors_total.get(reason, 0) + 1
        if st.writable or st.last_error_kind != reason:
            what = {"disk_full": "disk full", "read_only": "file system is read-only",
                    "permission": "permission denied"}.get(reason, "write failed")
            log.error(
                "store %s: cannot write (%s: %s); keeping up to %d rows in memory and retrying every %.0f s "
                "(see accelmon_store_writable)",
                self.store.root, what, summarize(e), self.buffer.max_rows, self.cfg.intervals.flush,
            )
            if st.writable:
                self._store_failing_since = time.time()
        st.writable = False
        st.last_error_kind = reason

    def _on_dropped(self, n: int) -> None:
        self.state.store.rows_dropped_total += n
        log.warning("store: write buffer full, dropped the %d oldest buffered rows", n)

    def _on_invalid(self, table: str, n: int, e: BaseException) -> None:
        self.state.store.rows_dropped_total += n
        msg = summarize(e)
        if msg not in self._invalid_seen and len(self._invalid_seen) < 100:
            self._invalid_seen.add(msg)
            log.warning("store: dropped %d %s row(s) of one poll that do not fit the schema: %s", n, table, msg)

    # ------------------------------------------------------------------ sources
    def _runner(self, kind: str, target: str, job: registry.SourceJob, src: Source | None, **kw: Any) -> SourceRunner:
        return SourceRunner(
            kind=kind,
            target=target,
            interval_s=job.interval_s,
            collect=job.collect,
            sink=self.direct if kind == "vcenter" else self.buffer,
            state=self.state,
            close=getattr(src, "close", None) if src is not None else None,
            job_name=job.name,
            **kw,
        )

    def build_static_sources(self) -> None:
        for inst in registry.instances(self.cfg):
            if inst.kind == "agent":
                self._add_agent(inst.target)
                continue
            after = self._after_vcenter if inst.kind == "vcenter" else None
            try:
                src = inst.build()
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - keep the daemon up; retry building at poll time
                log.warning("%s %s: cannot set up yet: %s", inst.kind, inst.target, summarize(e))
                lazy = _LazySource(inst)
                job = registry.SourceJob(inst.kind, inst.interval_s, lazy.collect)
                self._register(self._runner(inst.kind, inst.target, job, lazy, after=after))
                continue
            self._sources.append(src)
            for job in registry.jobs_of(inst.kind, src, inst.interval_s):
                self._register(self._runner(inst.kind, inst.target, job, src, after=after))

    def _register(self, r: SourceRunner) -> None:
        jid = f"{r.job_name}|{r.target}"
        with self._lock:
            self.runners[jid] = r
        if self.scheduler is not None:
            self._schedule(jid, r)

    def _schedule(self, jid: str, r: SourceRunner) -> None:
        assert self.scheduler is not None
        executor = "vcenter" if r.kind == "vcenter" else "sources"
        first = datetime.now(UTC) + timedelta(
            seconds=0.05 if r.kind == "vcenter" else 0.2 + _spread(jid, min(r.interval_s, 10.0))
        )
        self.scheduler.add_job(
            r, "interval", seconds=r.interval_s, id=jid, name=jid, executor=executor,
            max_instances=1, coalesce=True, misfire_grace_time=max(1, int(r.interval_s)),
            next_run_time=first, replace_existing=True,
        )

    def _add_agent(self, url: str) -> None:
        if url in self._agent_runners or not registry.enabled(self.cfg, "agent"):
            return
        inst = registry.agent_instance(self.cfg, url)
        src = inst.build()
        job = registry.SourceJob("agent", inst.interval_s, src.collect)
        r = self._runner("agent", url, job, src)
        self._agent_runners[url] = r
        self._register(r)

    def _remove_agent(self, url: str) -> None:
        r = self._agent_runners.pop(url, None)
        if r is None:
            return
        jid = f"{r.job_name}|{r.target}"
        with self._lock:
            self.runners.pop(jid, None)
        if self.scheduler is not None:
            try:
                self.scheduler.remove_job(jid)
            except Exception:  # noqa: BLE001 - already gone
                pass
        r.close()
        self.state.unregister_source(r.job_name, url)
        self.state.forget_agent(url)
        log.info("agent %s: no longer discovered; stopped polling it", url)

    def sync_agents(self) -> tuple[int, int]:
        """Reconcile agent jobs with discovery (GPU VMs' guest IPs + static). Returns (added, removed)."""
        if not registry.enabled(self.cfg, "agent"):
            return (0, 0)
        with self._lock:
            want = set(agent_targets(self.state.vms(), self.cfg.agents))
            have = set(self._agent_runners)
            for url in sorted(want - have):
                self._add_agent(url)
            # static targets stay; discovered ones go when their VM is gone
            for url in sorted(have - want):
                self._remove_agent(url)
        added, removed = len(want - have), len(have - want)
        if added or removed:
            log.info("agent discovery: %d agent(s) (+%d, -%d)", len(want), added, removed)
        return added, removed

    def _after_vcenter(self, res: CollectResult) -> None:
        if any(t.startswith("inv_") for t in res.tables) or self.state.version != self._inventory_version:
            self._inventory_version = self.state.version
            self.sync_agents()

    # ------------------------------------------------------------------ housekeeping jobs
    def _job(self, name: str, fn: Any, *, quiet: bool = False) -> JobRunner:
        j = JobRunner(name, fn, self.state, quiet_errors=quiet)
        self.jobs[name] = j
        return j

    def _add_housekeeping(self) -> None:
        assert self.scheduler is not None
        cfg, store, state = self.cfg, self.store, self.state
        now = datetime.now(UTC)
        hk = {"executor": "housekeeping", "max_instances": 1, "coalesce": True, "replace_existing": True}
        self.scheduler.add_job(self._job("flush", lambda: housekeeping.flush(self.buffer, state), quiet=True),
                               "interval", seconds=cfg.intervals.flush, id="flush", misfire_grace_time=None, **hk)
        self.scheduler.add_job(self._job("compaction", lambda: housekeeping.compact(store, state)),
                               "interval", seconds=cfg.intervals.compaction, id="compaction",
                               next_run_time=now + timedelta(seconds=min(cfg.intervals.compaction, 300)),
                               misfire_grace_time=None, **hk)
        self.scheduler.add_job(self._job("retention", lambda: housekeeping.retention(store, cfg, state)),
                               "interval", seconds=cfg.intervals.retention, id="retention",
                               next_run_time=now + timedelta(seconds=30), misfire_grace_time=None, **hk)
        # hourly rollups of the completed hours, plus catch-up of any day not (or no longer) rolled up
        self.scheduler.add_job(self._job("rollup", lambda: housekeeping.rollup(store)),
                               "cron", minute=5, id="rollup", next_run_time=now + timedelta(seconds=60),
                               misfire_grace_time=None, **hk)

        def findings() -> None:
            state.prune(time.time())
            housekeeping.refresh_findings(store, state)

        self.scheduler.add_job(self._job("findings", findings),
                               "interval", seconds=cfg.intervals.findings, id="findings",
                               next_run_time=now + timedelta(seconds=1), misfire_grace_time=None, **hk)
        if cfg.report.enabled:
            try:
                job = add_report_job(self.scheduler, store, cfg)
            except Exception as e:  # noqa: BLE001
                log.warning("report: could not schedule the daily report: %s", summarize(e))
            else:
                if job is not None:  # same bookkeeping as the other jobs, then fresh findings gauges
                    fn, args, kwargs = job.func, tuple(job.args), dict(job.kwargs)

                    def report() -> None:
                        fn(*args, **kwargs)
                        housekeeping.refresh_findings(store, state)

                    job.modify(func=self._job("report", report), args=(), kwargs={},
                               executor="housekeeping")

    def _on_event(self, ev: JobExecutionEvent) -> None:
        if ev.code in (EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED):
            self.skipped_runs += 1

    # ------------------------------------------------------------------ lifecycle
    def prepare(self) -> None:
        self.store.quarantine_bad_files = True  # an unreadable file is moved aside on first failure
        try:  # finish or discard what a killed `accelmon import-trace` left staged
            for msg in recover_staged_imports(self.store):
                log.warning("import-trace: %s", msg)
        except Exception as e:  # noqa: BLE001 - the next import-trace retries it
            log.warning("interrupted imports not recovered: %s", summarize(e))
        try:
            if not self.store.ensure_catalog():
                log.info("catalog is held open by another process; its views stay as they are")
        except Exception as e:  # noqa: BLE001 - the catalog is a convenience; ingestion must not depend on it
            log.warning("catalog %s: not rewritten: %s", self.store.catalog_path, summarize(e))
        try:
            n = housekeeping.load_latest_inventory(self.store, self.state)
            if n:
                log.info("loaded the latest inventory from the store: %s",
                         ", ".join(f"{k}={v}" for k, v in sorted(n.items())))
        except Exception as e:  # noqa: BLE001
            log.warning("could not load the latest inventory from the store: %s", summarize(e))
        try:
            n = vmotion_history.load(self.store, self.state)
            if n:
                log.info("vMotion counters continue from the store: %d migration(s) recorded", n)
        except Exception as e:  # noqa: BLE001
            log.warning("could not load the vMotion history from the store; its counters start at 0: %s",
                        summarize(e))
        try:
            housekeeping.refresh_findings(self.store, self.state)
        except Exception as e:  # noqa: BLE001
            log.debug("findings not loaded: %s", summarize(e))
        self.build_static_sources()
        self.sync_agents()
        if not self.cfg.vcenter and not self.cfg.agents.static and not self.cfg.dcgm \
                and not self.cfg.nvidia_gpu_exporter:
            log.warning("%s: no sources configured: add [[vcenter]], agents.static, [[dcgm]] or "
                        "[[nvidia_gpu_exporter]] (see deploy/accelmon.toml); only housekeeping runs",
                        self.cfg.source_file)

    def start(self) -> None:
        self.scheduler = BackgroundScheduler(
            executors={
                "default": DaemonPoolExecutor(4),
                "sources": DaemonPoolExecutor(self.source_workers),
                "vcenter": DaemonPoolExecutor(max(2, 2 * len(self.cfg.vcenter))),
                "housekeeping": DaemonPoolExecutor(2),
            },
            job_defaults={"max_instances": 1, "coalesce": True},
            timezone=UTC,
        )
        self.scheduler.add_listener(self._on_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        with self._lock:
            for jid, r in self.runners.items():
                self._schedule(jid, r)
        self._add_housekeeping()
        self.scheduler.start()

    def run_once(self) -> int:
        """Every source one time (vCenter first, then discovery, then agents/exporters in
        parallel), flush, and return 0 when every poll succeeded, else 1."""
        ok = True
        with self._lock:
            vc = [r for r in self.runners.values() if r.kind == "vcenter"]
        for r in vc:
            ok &= r() is True
        self.sync_agents()
        with self._lock:
            rest = [r for r in self.runners.values() if r.kind != "vcenter"]
        if rest:
            with ThreadPoolExecutor(max_workers=min(self.source_workers, len(rest))) as pool:
                futs = [pool.submit(r) for r in rest]
                wait(futs)
                ok &= all(f.result() is True for f in futs)
        try:
            housekeeping.flush(self.buffer, self.state)
        except OSError as e:
            log.error("store %s: final flush failed: %s", self.store.root, summarize(e))
            return 1
        return 0 if ok else 1

    def running_jobs(self) -> int:
        return sum(1 for r in list(self.runners.values()) if r._lock.locked())

    def stop(self, *, grace_s: float = 2.0, flush_s: float = 2.0) -> bool:
        """Stop polling, give running polls ``grace_s`` to finish, flush. True if all rows landed."""
        t0 = time.monotonic()
        self._stopping.set()
        if self.scheduler is not None:
            try:
                self.scheduler.shutdown(wait=False)
            except Exception:  # noqa: BLE001 - already stopped
                pass
        with self._lock:
            runners = list(self.runners.values())
        deadline = t0 + grace_s
        while time.monotonic() < deadline and any(r._lock.locked() for r in runners):
            time.sleep(0.05)
        for r in runners:
            r.closed = True
        ok = self.buffer.flush_quietly(deadline_s=flush_s)
        self.state.store.rows_buffered = self.buffer.rows_buffered
        closer = threading.Thread(target=self._close_all, args=(runners,), daemon=True)
        closer.start()
        closer.join(timeout=0.5)
        written = sum(self.state.store.rows_written_total.values())
        if not ok:
            log.error("store %s: %d rows could not be written before exit", self.store.root,
                      self.buffer.rows_buffered)
        log.info("stopped in %.1f s: %d rows written this run, %d not written", time.monotonic() - t0, written,
                 self.buffer.rows_buffered)
        return ok

    @staticmethod
    def _close_all(runners: list[SourceRunner]) -> None:
        for r in runners:
            r.close()


class _LazySource:
    """A source whose construction failed at start-up (e.g. its endpoint was down): retried per poll."""

    def __init__(self, inst: registry.SourceInstance) -> None:
        self.inst = inst
        self.src: Source | None = None

    def collect(self, store: Any) -> CollectResult:
        if self.src is None:
            self.src = self.inst.build()
        return self.src.collect(store)

    def close(self) -> None:
        if self.src is not None:
            self.src.close()
