"""Check the agent against a REAL GPU: idle, then a short matrix-multiply load, then compare.

Run on a machine (or VM) with an NVIDIA GPU and driver:

    python bench/real_gpu_check.py [--gpu 0] [--seconds 12]

It starts the agent in-process on the real NVML (pynvml), serves /metrics on 127.0.0.1,
scrapes it, and:

1. idle phase: nothing runs → ``accelmon_gpu_idle_seconds_total`` grows ~1 s per second and
   ``busy_seconds_total`` barely moves;
2. busy phase: a matmul loop on that GPU (torch if installed, else cupy, else a tiny PTX spin
   kernel launched through the CUDA driver API with ctypes, which needs only the driver) →
   ``busy_seconds_total`` grows ~1 s per second and ``idle_seconds_total`` stops growing.

3. GPM (Hopper+, where ``activity_source="gpm"``): a half-precision matmul load (torch only;
   skipped with the reason printed when torch is not importable) → SM-active and tensor-active
   seconds grow well above the idle phase's; a one-block, one-thread spin kernel (PTX through the
   CUDA driver API) → busy seconds grow ~1 s/s while SM-active seconds stay low (the "hollow"
   GPU NVML utilization cannot tell from a full one).

It prints what it saw (raw driver samples too, so units can be checked) and, last line,
``key=value`` pairs ending in ``result=PASS`` or ``result=FAIL``. Exit 0 pass, 1 fail,
2 when there is no usable GPU / NVML here.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import threading
import time
from typing import Any

os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA ordinals = NVML indexes

import requests  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

PTX = r"""
.version 6.0
.target sm_50
.address_size 64
.visible .entry spin(.param .u64 out, .param .u32 iters)
{
  .reg .pred p;
  .reg .f32 a, b;
  .reg .u32 i, n, tid;
  .reg .u64 o, off;
  ld.param.u64 o, [out];
  ld.param.u32 n, [iters];
  mov.f32 a, 0f3F800000;
  mov.f32 b, 0f3F7FBE77;
  mov.u32 i, 0;
LOOP:
  fma.rn.f32 a, a, b, 0f3F800000;
  add.u32 i, i, 1;
  setp.lt.u32 p, i, n;
  @p bra LOOP;
  mov.u32 tid, %tid.x;
  cvta.to.global.u64 o, o;
  mul.wide.u32 off, tid, 4;
  add.u64 o, o, off;
  st.global.f32 [o], a;
  ret;
}
"""


def gpu_values(text: str, uuid: str) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("UUID") == uuid and "link" not in s.labels and "xid" not in s.labels:
                out[s.name] = s.value
    return out


ACTIVE = ("accelmon_gpu_sm_active_seconds_total", "accelmon_gpu_tensor_active_seconds_total",
          "accelmon_gpu_dram_active_seconds_total")


def series_labels(text: str, name: str) -> list[dict[str, str]]:
    return [dict(s.labels) for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name]


# ------------------------------------------------------------------ load generators
def load_torch(index: int, stop: threading.Event) -> str:
    import torch  # type: ignore[import-not-found]

    dev = torch.device(f"cuda:{index}")
    a = torch.randn(4096, 4096, device=dev)
    b = torch.randn(4096, 4096, device=dev)
    while not stop.is_set():
        for _ in range(10):
            a = (a @ b) / 4096.0
        torch.cuda.synchronize(dev)
    return "torch"


def load_cupy(index: int, stop: threading.Event) -> str:
    import cupy  # type: ignore[import-not-found]

    with cupy.cuda.Device(index):
        a = cupy.random.rand(4096, 4096, dtype=cupy.float32)
        b = cupy.random.rand(4096, 4096, dtype=cupy.float32)
        while not stop.is_set():
            for _ in range(10):
                a = (a @ b) / 4096.0
            cupy.cuda.Device(index).synchronize()
    return "cupy"


def load_torch_fp16(index: int, stop: threading.Event) -> str:
    """Half-precision GEMMs: run on the tensor cores (GPM ANY_TENSOR_UTIL)."""
    import torch  # type: ignore[import-not-found]

    dev = torch.device(f"cuda:{index}")
    a = torch.randn(8192, 8192, device=dev, dtype=torch.float16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.float16)
    while not stop.is_set():
        for _ in range(10):
            c = a @ b
        torch.cuda.synchronize(dev)
    del c
    return "torch-fp16"


def load_spin_one_block(index: int, stop: threading.Event) -> str:
    """One block of one thread spinning: the GPU is "busy" (a kernel runs) on one SM only."""
    return load_ptx(index, stop, blocks=1, threads=1, iters=5_000_000)


def load_ptx(index: int, stop: threading.Event, blocks: int = 4096, threads: int = 256,
             iters: int = 200_000) -> str:
    cu = ctypes.CDLL("libcuda.so.1")

    def check(rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what} failed: CUresult {rc}")

    check(cu.cuInit(0), "cuInit")
    dev = ctypes.c_int()
    check(cu.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
    ctx = ctypes.c_void_p()
    check(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    check(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
    mod = ctypes.c_void_p()
    check(cu.cuModuleLoadData(ctypes.byref(mod), ctypes.c_char_p(PTX.encode())), "cuModuleLoadData")
    fn = ctypes.c_void_p()
    check(cu.cuModuleGetFunction(ctypes.byref(fn), mod, b"spin"), "cuModuleGetFunction")
    dptr = ctypes.c_uint64()
    check(cu.cuMemAlloc_v2(ctypes.byref(dptr), ctypes.c_size_t(threads * 4)), "cuMemAlloc")
    n_iters = ctypes.c_uint32(iters)
    args = (ctypes.c_void_p * 2)(ctypes.cast(ctypes.byref(dptr), ctypes.c_void_p),
                                 ctypes.cast(ctypes.byref(n_iters), ctypes.c_void_p))
    while not stop.is_set():
        check(cu.cuLaunchKernel(fn, blocks, 1, 1, threads, 1, 1, 0, None, args, None), "cuLaunchKernel")
        check(cu.cuCtxSynchronize(), "cuCtxSynchronize")
    cu.cuMemFree_v2(dptr)
    return "ptx-spin-kernel (CUDA driver API via ctypes)"


def run_load(index: int, stop: threading.Event, used: list[str], errors: list[str],
             loaders: tuple[Any, ...] | None = None) -> None:
    """Load the GPU until ``stop``: torch, else cupy, else the PTX kernel (driver only)."""
    for fn in loaders or (load_torch, load_cupy, load_ptx):
        try:
            used.append(fn(index, stop))
            return
        except ImportError:
            continue
        except Exception as e:  # report it and try the next way
            errors.append(f"{fn.__name__}: {type(e).__name__}: {e}")
    errors.append("no way to load the GPU worked")


# ------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", type=int, default=0, help="NVML index of the GPU to load (default 0)")
    ap.add_argument("--seconds", type=float, default=12.0, help="length of each phase (default 12)")
    args = ap.parse_args()

    import pynvml

    from accelmon.collector.agent.agent import Agent
    from accelmon.collector.agent.server import AgentHTTPServer

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        print(f"no usable NVML here ({e}); run this on a machine with an NVIDIA GPU and driver", file=sys.stderr)
        print("result=NO_GPU")
        return 2
    pynvml.nvmlShutdown()

    agent = Agent(pynvml, poll_interval=0.5, backend="nvml")
    agent.start()
    if args.gpu >= len(agent.slots) or agent.slots[args.gpu].identity is None:
        print(f"GPU {args.gpu} not found / not readable; NVML sees {len(agent.slots)} GPU(s)", file=sys.stderr)
        print("result=NO_GPU")
        return 2
    ident = agent.slots[args.gpu].identity
    assert ident is not None
    srv = AgentHTTPServer(agent, "127.0.0.1:0")
    srv.serve_in_thread()
    agent.poll_once()
    agent.start_polling()
    url = srv.url + "/metrics"
    print(f"driver {agent.driver_version}, NVML {agent.nvml_version}; GPU {args.gpu}: {ident.name} {ident.uuid} "
          f"bus {ident.pci_bus_id}, virtualization {ident.virtualization_mode}, MIG {ident.mig_mode}")
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(args.gpu)
        vt, samples = pynvml.nvmlDeviceGetSamples(h, pynvml.NVML_GPU_UTILIZATION_SAMPLES, 0)
        ts = [s.timeStamp for s in samples[-8:]]
        gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
        print(f"raw driver samples: valType={vt}, {len(samples)} in ring, last values "
              f"{[s.sampleValue.uiVal for s in samples[-8:]]}, spacing µs {gaps}, "
              f"newest age {time.time() - ts[-1] / 1e6:.2f} s")
    except pynvml.NVMLError as e:
        print(f"raw driver samples: {e}")

    def scrape() -> dict[str, float]:
        return gpu_values(requests.get(url, timeout=10).text, ident.uuid)

    def phase(name: str) -> dict[str, float]:
        time.sleep(1.5)  # let the poll catch up
        a = scrape()
        t0 = time.time()
        time.sleep(args.seconds)
        b = scrape()
        dt = time.time() - t0
        d = {k: b.get(k, float("nan")) - a.get(k, float("nan")) for k in
             ("accelmon_gpu_busy_seconds_total", "accelmon_gpu_idle_seconds_total",
              "accelmon_gpu_unobserved_seconds_total", "accelmon_gpu_energy_joules_total", *ACTIVE)}
        d["seconds"] = dt
        d["util"] = b.get("accelmon_gpu_utilization_ratio", float("nan"))
        d["power_w"] = b.get("accelmon_gpu_power_watts", float("nan"))
        print(f"{name:5s} phase {dt:5.1f} s: busy +{d['accelmon_gpu_busy_seconds_total']:.2f} s, "
              f"idle +{d['accelmon_gpu_idle_seconds_total']:.2f} s, unobserved "
              f"+{d['accelmon_gpu_unobserved_seconds_total']:.2f} s, energy +{d['accelmon_gpu_energy_joules_total']:.0f} J, "
              f"util {d['util']:.2f}, power {d['power_w']:.0f} W"
              + (f", SM active +{d[ACTIVE[0]]:.2f} s, tensor active +{d[ACTIVE[1]]:.2f} s" if gpm_on else ""))
        return d

    def loaded_phase(name: str, loaders: tuple[Any, ...]) -> tuple[dict[str, float] | None, str]:
        stop = threading.Event()
        used: list[str] = []
        errors: list[str] = []
        t = threading.Thread(target=run_load, args=(args.gpu, stop, used, errors, loaders), daemon=True)
        t.start()
        time.sleep(3.0)  # context creation / JIT
        d = phase(name) if t.is_alive() else None
        stop.set()
        t.join(timeout=60)
        for e in errors:
            print(f"{name} load: {e}", file=sys.stderr)
        return d, used[0] if used else ""

    first = gpu_values(requests.get(url, timeout=10).text, ident.uuid)
    gpm_on = ACTIVE[0] in first
    info = [k for k in series_labels(requests.get(url, timeout=10).text, "accelmon_gpu_info")
            if k.get("UUID") == ident.uuid]
    print(f"activity_source={info[0].get('activity_source', '?') if info else '?'} (GPM "
          f"{'on: SM/tensor/DRAM activity counters present' if gpm_on else 'not available on this GPU / in this guest'})")

    idle = phase("idle")
    stop = threading.Event()
    used: list[str] = []
    errors: list[str] = []
    t = threading.Thread(target=run_load, args=(args.gpu, stop, used, errors), daemon=True)
    t.start()
    time.sleep(3.0)  # context creation / JIT
    busy = phase("busy") if t.is_alive() else None
    stop.set()
    t.join(timeout=60)
    for e in errors:
        print(f"load: {e}", file=sys.stderr)
    print(f"load generator: {used[0] if used else 'none'}")
    gpm_checks: list[tuple[str, bool]] = []
    gpm_keys = ""
    if gpm_on:
        try:
            import torch  # type: ignore[import-not-found]  # noqa: F401
            mm, mm_used = loaded_phase("mm", (load_torch_fp16,))
            gpm_checks.append(("GPM matmul (torch fp16) ran", mm is not None and bool(mm_used)))
        except ImportError as e:
            mm, mm_used = None, ""
            print(f"GPM matmul sub-check skipped: torch is not importable ({e})")
        spin, spin_used = loaded_phase("spin", (load_spin_one_block,))
        print(f"GPM loads: matmul={mm_used or 'skipped'} spin={spin_used or 'failed'}")
        if mm is not None:
            gpm_checks += [
                ("GPM matmul: SM active >= 0.5 s/s and well above idle",
                 mm[ACTIVE[0]] >= 0.5 * mm["seconds"] and mm[ACTIVE[0]] >= idle[ACTIVE[0]] + 0.3 * mm["seconds"]),
                ("GPM matmul: tensor active >= 0.2 s/s and well above idle",
                 mm[ACTIVE[1]] >= 0.2 * mm["seconds"] and mm[ACTIVE[1]] >= idle[ACTIVE[1]] + 0.15 * mm["seconds"]),
            ]
            gpm_keys += f" mm_sm_active_s={mm[ACTIVE[0]]:.2f} mm_tensor_active_s={mm[ACTIVE[1]]:.2f}"
        gpm_checks += [("GPM spin kernel ran", spin is not None and bool(spin_used))]
        if spin is not None:
            gpm_checks += [
                ("GPM one-block spin: busy >= 0.7 s/s", spin["accelmon_gpu_busy_seconds_total"] >= 0.7 * spin["seconds"]),
                ("GPM one-block spin: SM active <= 0.1 s/s", spin[ACTIVE[0]] <= 0.1 * spin["seconds"]),
            ]
            gpm_keys += (f" spin_busy_s={spin['accelmon_gpu_busy_seconds_total']:.2f} "
                         f"spin_sm_active_s={spin[ACTIVE[0]]:.2f} seconds={spin['seconds']:.1f}")
    text = requests.get(url, timeout=10).text
    missing = [m for m in ("accelmon_gpu_busy_seconds_total", "accelmon_gpu_fb_used_bytes") if m not in text]
    srv.shutdown()
    srv.server_close()
    agent.close()

    checks: list[tuple[str, bool]] = [
        ("metrics present", not missing),
        ("idle phase: idle grows ~1 s/s", idle["accelmon_gpu_idle_seconds_total"] >= 0.7 * idle["seconds"]),
        ("load ran", busy is not None and bool(used)),
    ]
    if busy is not None:
        checks += [
            ("busy phase: busy grows ~1 s/s", busy["accelmon_gpu_busy_seconds_total"] >= 0.7 * busy["seconds"]),
            ("busy phase: idle stops growing", busy["accelmon_gpu_idle_seconds_total"] <= 0.2 * busy["seconds"]),
        ]
    checks += gpm_checks
    for name, ok in checks:
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    passed = all(ok for _, ok in checks)
    b = busy or {}
    print(f"gpu={ident.name.replace(' ', '_')} idle_phase_idle_s={idle['accelmon_gpu_idle_seconds_total']:.2f} "
          f"idle_phase_busy_s={idle['accelmon_gpu_busy_seconds_total']:.2f} "
          f"busy_phase_busy_s={b.get('accelmon_gpu_busy_seconds_total', float('nan')):.2f} "
          f"busy_phase_idle_s={b.get('accelmon_gpu_idle_seconds_total', float('nan')):.2f} "
          f"gpm={'on' if gpm_on else 'off'}{gpm_keys} result={'PASS' if passed else 'FAIL'}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
