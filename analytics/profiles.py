"""The vGPU profile table (analytics/vgpu_profiles.csv) and profile-name parsing."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

GIB = 1 << 30
CSV_PATH = Path(__file__).with_name("vgpu_profiles.csv")
_NAME_RE = re.compile(r"-(?:(\d)-)?(\d+)([a-z])$")


@dataclass(frozen=True)
class Profile:
    model: str  # table model key, e.g. "a100-40"
    name: str  # "10c", "1-5c"
    series: str  # C, Q, A, B
    fb_bytes: int
    mode: str  # time_sliced | mig
    max_per_gpu: int
    max_mixed: int
    mig_slices: int


@dataclass(frozen=True)
class Model:
    key: str
    family: str
    fb_total_bytes: int


class ProfileTable:
    def __init__(self, profiles: list[Profile]) -> None:
        self.profiles = profiles
        self._by = {(p.model, p.name): p for p in profiles}
        seen: dict[str, Model] = {}
        for p in profiles:
            if p.model not in seen:
                fam = p.model.split("-")[0]
                total = max(q.fb_bytes for q in profiles if q.model == p.model)
                seen[p.model] = Model(p.model, fam, total)
        # longest family first, so "a100" wins over "a10"
        self.models = sorted(seen.values(), key=lambda m: (-len(m.family), m.key))

    def get(self, model: str, name: str) -> Profile | None:
        return self._by.get((model, name))

    def model_for(self, device_name: str | None, fb_total_bytes: int | None) -> str | None:
        """Table model key of a physical GPU from its device/model name and framebuffer size."""
        if not device_name:
            return None
        low = device_name.lower().replace(" ", "")
        for m in self.models:
            if m.family in low and (
                fb_total_bytes is None or abs(fb_total_bytes - m.fb_total_bytes) <= 0.1 * m.fb_total_bytes
            ):
                return m.key
        return None

    def for_model(self, model: str) -> list[Profile]:
        return [p for p in self.profiles if p.model == model]


def parse_profile_name(vgpu_profile: str | None) -> str | None:
    """``grid_a100-10c`` → ``10c``; ``grid_a100-3-20c`` → ``3-20c`` (MIG-backed)."""
    if not vgpu_profile:
        return None
    m = _NAME_RE.search(vgpu_profile.strip().lower())
    if not m:
        return None
    slices, fb, series = m.groups()
    return f"{slices}-{fb}{series}" if slices else f"{fb}{series}"


@lru_cache(maxsize=4)
def load(path: str | None = None) -> ProfileTable:
    rows = []
    with open(path or CSV_PATH, newline="") as f:
        lines = [ln for ln in f if not ln.startswith("#")]
    for r in csv.DictReader(lines):
        rows.append(
            Profile(
                model=r["gpu_model"], name=r["profile"], series=r["series"], fb_bytes=int(float(r["fb_gib"]) * GIB),
                mode=r["mode"], max_per_gpu=int(r["max_per_gpu"]), max_mixed=int(r["max_mixed"]),
                mig_slices=int(r["mig_slices"] or 0),
            )
        )
    return ProfileTable(rows)
