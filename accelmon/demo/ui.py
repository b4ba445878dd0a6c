"""What the demo shows while it works: a rich progress display on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class Display:
    def __init__(self, *, live: bool | None = None) -> None:
        self.console = Console(stderr=True, highlight=False)
        self.live = sys.stderr.isatty() if live is None else live
        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
            TimeElapsedColumn(), console=self.console, disable=not self.live, transient=False,
        )
        self.t0 = time.monotonic()

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def note(self, msg: str) -> None:
        if self.live:
            self.progress.console.print(f"[dim]{msg}[/dim]")
        else:
            print(f"demo: {msg}", file=sys.stderr, flush=True)

    @contextmanager
    def step(self, description: str, total: int | None = 1) -> Iterator[Any]:
        """A step with a bar; yields ``update(done, total)``."""
        if not self.live:
            print(f"demo: {description} …", file=sys.stderr, flush=True)
        task = self.progress.add_task(description, total=total)
        t = time.monotonic()

        def update(done: int, total_: int | None = None) -> None:
            self.progress.update(task, completed=done, total=total_ if total_ is not None else total)

        yield update
        self.progress.update(task, completed=self.progress.tasks[task].total or 1,
                             total=self.progress.tasks[task].total or 1)
        if not self.live:
            print(f"demo: {description}: done in {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)

    def countdown(self, description: str, total_s: float | None) -> Any:
        return self.progress.add_task(description, total=total_s)

    def tick(self, task: Any, done: float, description: str | None = None) -> None:
        kw: dict[str, Any] = {"completed": done}
        if description is not None:
            kw["description"] = description
        self.progress.update(task, **kw)
