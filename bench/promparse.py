"""Reading and writing the Prometheus text format at fleet size: is prometheus_client fast enough?

Parse: a 1,000-GPU dcgm-exporter page (the simulated exporter, accelmon/sim/exporters.py, over a
1,000-GPU simulated NVML: H100s with the stock profiling fields) parsed by the daemon's parser
(accelmon.collector.promtext.parse) and by ``prometheus_client.parser.text_string_to_metric_families``
(all samples materialised); both must give the same samples (checked here as well as in
tests/agent/test_promtext.py).

Write: the exporter's families for 2,000 GPUs (25 labelled families, ~50,000 samples) written by
accelmon's writer (accelmon.exposition.render) and by ``prometheus_client.generate_latest``;
the bytes must be equal.

Median of ``--repeat`` runs each. Last line: ``key=value`` figures (seconds; ``*_x`` = how many
times slower prometheus_client is).

    python bench/promparse.py [--gpus 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from accelmon.collector.promtext import parse
from accelmon.exposition import FastFamily, reference, render
from accelmon.sim.clock import ManualClock
from accelmon.sim.exporters import DCGM_PROF_FIELDS, dcgm_exporter_text
from accelmon.sim.nvml import SimNVML
from accelmon.sim.spec import parse_spec

T0 = 1_700_000_000.0


def dcgm_page(gpus: int) -> str:
    clock = ManualClock(T0)
    per = 64  # a spec's [[gpu]] table holds at most 64: one table per 64 GPUs
    tables = [{"model": "H100", "count": min(per, gpus - i), "trace": "bursty_inference"} for i in range(0, gpus, per)]
    sim = SimNVML(parse_spec({"gpu": tables}), clock=clock)
    sim.nvmlInit()
    clock.advance(60.0)
    return dcgm_exporter_text(sim, prof_fields=DCGM_PROF_FIELDS)


def _median(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm (caches, imports)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _ours(text: str) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return sorted((s.name, tuple(sorted(s.labels.items())), s.value) for v in parse(text).values() for s in v)


def _theirs(text: str) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    """prometheus_client's samples with its one renaming undone: it appends ``_total`` to the
    samples of a counter family whose name lacks it (dcgm's DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION)."""
    written = {ln.split(" ", 3)[2] for ln in text.splitlines() if ln.startswith("# TYPE ")}
    out = []
    for f in text_string_to_metric_families(text):
        for s in f.samples:
            name = s.name
            if f.type == "counter" and name.endswith("_total") and name[:-6] in written:
                name = name[:-6]
            out.append((name, tuple(sorted(s.labels.items())), s.value))
    return sorted(out)


def exporter_families(gpus: int) -> list[FastFamily]:
    labels = ("gpu_uuid", "vm_name", "vm_uuid", "vcenter")
    fams = [FastFamily(f"accelmon_bench_{i}", "A bench family.", "counter" if i % 3 == 0 else "gauge", labels)
            for i in range(25)]
    for g in range(gpus):
        lv = (f"GPU-{g:08x}-0000-4000-8000-000000000000", f"gpu-vm-{g:05d}", f"5000{g:04x}-aaaa", "vc1")
        for i, f in enumerate(fams):
            f.add(lv, g * 0.5 + i)
    return fams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", type=int, default=1000, help="GPUs on the dcgm-exporter page (default 1000)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()

    text = dcgm_page(args.gpus)
    n = sum(1 for ln in text.splitlines() if ln and not ln.startswith("#"))
    assert _ours(text) == _theirs(text), "the parsers disagree"
    ours = _median(lambda: parse(text), args.repeat)
    theirs = _median(lambda: [list(f.samples) for f in text_string_to_metric_families(text)], args.repeat)
    print(f"parse: {args.gpus} GPUs, {n} samples, {len(text) / 1e6:.2f} MB: promtext {ours * 1e3:.1f} ms, "
          f"prometheus_client {theirs * 1e3:.1f} ms ({theirs / ours:.1f}x)")

    w_gpus = 2 * args.gpus
    fams = exporter_families(w_gpus)
    assert render(fams) == reference(fams), "the writers disagree"
    w_ours = _median(lambda: render(fams), args.repeat)
    w_theirs = _median(lambda: reference(fams), args.repeat)
    print(f"write: {w_gpus} GPUs, {25 * w_gpus} samples: accelmon.exposition {w_ours * 1e3:.1f} ms, "
          f"generate_latest {w_theirs * 1e3:.1f} ms ({w_theirs / w_ours:.1f}x)")
    print(f"gpus={args.gpus} samples={n} parse_promtext_s={ours:.4f} parse_prometheus_client_s={theirs:.4f} "
          f"parse_x={theirs / ours:.1f} write_gpus={w_gpus} write_exposition_s={w_ours:.4f} "
          f"write_generate_latest_s={w_theirs:.4f} write_x={w_theirs / w_ours:.1f}")


if __name__ == "__main__":
    main()
