"""Progress of every long phase (training, evaluators, sampling, FID features, bits/dim, dataset
builds): one mechanism, a live bar on a terminal and plain lines everywhere else.

    with Progress("eval test loss", total=len(batches), unit="batches") as p:
        for batch in batches:
            ...
            p.update()

Off a terminal (logs, CI) a line is printed at a steady wall-clock rhythm, never a carriage
return: whenever the rhythm has passed since the last line any phase printed (a phase's own
metrics lines and `echo` count), so no stretch of work is silent for longer:

    eval test loss: 40/313 batches (13%)  3.20 batches/s  elapsed 0:00:15  ETA 0:01:25

On a terminal (stdout a TTY) tqdm draws one live line with the same numbers. The rate, and so
the ETA, is measured from the first update on: the first iteration, which compiles, is left out
of the ETA (it is in `elapsed`). A short phase within the rhythm prints nothing.

Environment:
  ATTN_JAX_PROGRESS_SECONDS  the rhythm of the plain lines, in seconds (default 20)
  ATTN_JAX_PROGRESS          auto (default: a bar on a TTY, lines otherwise) | bar | lines | off

Inside a jitted `lax.scan` (the samplers, the full bits/dim bound) progress comes out through
`scan_ticker`, a `jax.debug.callback` every few steps, to the `Progress` opened with `p.scan()`.
Only process 0 prints.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

SECONDS_ENV = "ATTN_JAX_PROGRESS_SECONDS"
MODE_ENV = "ATTN_JAX_PROGRESS"
DEFAULT_SECONDS = 20.0
MODES = ("auto", "bar", "lines", "off")

_lock = threading.RLock()
_live_bars: list[Any] = []          # tqdm bars on screen (lines are written above them)
_scan_target: list[tuple[Any, int]] = []  # (Progress, offset) receiving scan ticks
_last_output = [time.perf_counter()]      # when any phase last printed a line


def rhythm_seconds() -> float:
    value = os.environ.get(SECONDS_ENV, "")
    try:
        return max(float(value), 0.0) if value else DEFAULT_SECONDS
    except ValueError:
        raise ValueError(f"${SECONDS_ENV}={value!r} must be a number of seconds") from None


def _mode(stream: TextIO) -> str:
    mode = os.environ.get(MODE_ENV, "auto") or "auto"
    if mode not in MODES:
        raise ValueError(f"${MODE_ENV}={mode!r}: choose one of {MODES}")
    if mode == "auto":
        isatty = getattr(stream, "isatty", None)
        mode = "bar" if isatty is not None and isatty() else "lines"
    return mode


def _primary() -> bool:
    """Process 0, without starting JAX's backends (that would break a later
    jax.distributed.initialize): before they start, every process counts as primary."""
    if "jax" not in sys.modules:
        return True
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized():
        return True
    import jax

    return jax.process_index() == 0


def hms(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def rate_str(rate: float) -> str:
    """3 significant digits without exponents: '0.823', '12.4', '23,456'."""
    if rate >= 100:
        return f"{rate:,.0f}"
    return f"{rate:.3g}" if rate >= 0.001 else f"{rate:.2e}"


def echo(line: str, stream: TextIO | None = None) -> None:
    """Prints a line without breaking a live bar (tqdm.write above it when one is drawn)."""
    stream = stream or sys.stdout
    with _lock:
        _last_output[0] = time.perf_counter()
        if _live_bars:
            from tqdm import tqdm

            tqdm.write(line, file=stream)
            stream.flush()
        else:
            print(line, file=stream, flush=True)


class Progress:
    """Progress of one phase: `total` units (steps, batches, examples), `done` so far.

    Args:
      desc: what is running, e.g. 'sampling' or 'eval test loss'.
      total: units of the whole phase (None: unknown, no ETA).
      unit: their name, plural ('steps', 'batches').
      done: units already done (a resumed run).
      every: the rhythm of the plain lines in seconds (default $ATTN_JAX_PROGRESS_SECONDS).
      enabled: print at all (default: on process 0).
    """

    def __init__(self, desc: str, total: int | None, *, unit: str = "it", done: int = 0,
                 every: float | None = None, enabled: bool | None = None,
                 stream: TextIO | None = None):
        self.desc, self.total, self.unit = desc, total, unit
        self.done = self._start = int(done)
        self.every = rhythm_seconds() if every is None else float(every)
        self.stream = stream or sys.stdout
        enabled = _primary() if enabled is None else enabled
        self.mode = _mode(self.stream) if enabled else "off"
        self.started = self._last_update = time.perf_counter()
        self._first: tuple[float, int] | None = None  # (time, done) at the first update
        self._window: tuple[float, int] | None = None  # start of the current rate window
        self.lines = 0                                # plain lines printed
        self._bar = None
        self._closed = False
        if self.mode == "bar":
            from tqdm import tqdm

            fmt = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} " + unit + "{postfix}"
                   if total else "{desc}: {n_fmt} " + unit + "{postfix}")
            with _lock:
                self._bar = tqdm(total=total, initial=self.done, desc=desc, file=self.stream,
                                 dynamic_ncols=True, leave=not _live_bars, bar_format=fmt)
                _live_bars.append(self._bar)
            self._bar.set_postfix_str(self._numbers(time.perf_counter(), False), refresh=False)

    # -- counting --
    def update(self, n: int = 1) -> None:
        self.update_to(self.done + n)

    def update_to(self, done: int, quiet: bool = False) -> None:
        """Sets the units done (never backwards: repeated or late ticks are harmless); `quiet`:
        no plain line now (the caller prints its own, see `write`)."""
        with _lock:
            if self._closed or done <= self.done and self._first is not None:
                return
            now = time.perf_counter()
            if self._first is None:  # the end of the first, compiling, iteration
                self._first = self._window = (now, max(done, self.done))
            delta, self.done = max(done - self.done, 0), max(done, self.done)
            self._last_update = now
            if self._bar is not None:
                self._bar.set_postfix_str(self._numbers(now, False), refresh=False)
                self._bar.update(delta)
            elif self.mode == "lines" and not quiet and now - _last_output[0] >= self.every:
                self._print(f"{self.desc}: {self._numbers(now)}", now)

    def rate(self, now: float | None = None) -> float | None:
        """Units per second since the first update (so without compilation), or None."""
        if self._first is None:
            return None
        t0, n0 = self._first
        now = time.perf_counter() if now is None else now
        return (self.done - n0) / (now - t0) if self.done > n0 and now > t0 else None

    def window_rate(self) -> float | None:
        """Units per second since the previous call (the first window starts at the first
        update), or None before two updates; starts a new window."""
        if self._window is None:
            return None
        now = time.perf_counter()
        t0, n0 = self._window
        self._window = (now, self.done)
        return (self.done - n0) / (now - t0) if self.done > n0 and now > t0 else None

    def eta(self, now: float | None = None) -> float | None:
        rate = self.rate(now)
        if rate is None or self.total is None:
            return None
        return max(self.total - self.done, 0) / rate

    def elapsed(self, now: float | None = None) -> float:
        return (time.perf_counter() if now is None else now) - self.started

    def _numbers(self, now: float, count: bool = True) -> str:
        """'40/313 batches (13%)  3.20 batches/s  elapsed 0:00:15  ETA 0:01:25' (without the
        count: the bar draws its own)."""
        parts = []
        if count:
            done = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
            parts.append(f"{done} {self.unit}")
            if self.total:
                parts[0] += f" ({100.0 * self.done / self.total:.0f}%)"
        rate = self.rate(now)
        if rate is not None:
            parts.append(f"{rate_str(rate)} {self.unit}/s")
        parts.append(f"elapsed {hms(self.elapsed(now))}")
        if self.total is not None:
            parts.append(f"ETA {hms(self.eta(now))}")
        return "  ".join(parts)

    # -- output --
    def _print(self, line: str, now: float) -> None:
        self.lines += 1
        _last_output[0] = now
        print(line, file=self.stream, flush=True)

    def write(self, line: str) -> None:
        """A line of this phase's own (a metrics line): above the bar, and it restarts the
        rhythm, so no plain progress line follows right after it."""
        if self.mode != "off":
            echo(line, self.stream)

    def close(self, finished: bool = True) -> None:
        """Ends the phase; a phase that printed lines and `finished` says so in a last line (one
        cut short by an error or a signal does not claim to be done)."""
        with _lock:
            if self._closed:
                return
            self._closed = True
            now = time.perf_counter()
            if self._bar is not None:
                self._bar.set_postfix_str(self._numbers(self._last_update, False),
                                          refresh=False)
                self._bar.close()
                _live_bars.remove(self._bar)
            elif self.lines and finished:  # the phase showed progress: say that it ended
                rate = self.rate(self._last_update)
                self._print(f"{self.desc}: done, {self.done} {self.unit} in "
                            f"{hms(self.elapsed(now))}"
                            + (f" ({rate_str(rate)} {self.unit}/s)" if rate else ""), now)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(finished=exc_type is None)

    # -- helpers --
    def track(self, iterable: Iterable[Any]) -> Iterator[Any]:
        """Yields the items of `iterable`, counting one unit after each item's work is done."""
        for item in iterable:
            yield item
            self.update()

    @contextlib.contextmanager
    def scan(self, offset: int = 0):
        """Routes `scan_ticker` ticks to this progress: a tick at scan step i sets
        `done = offset + i + 1`."""
        with _lock:
            _scan_target.append((self, int(offset)))
        try:
            yield self
        finally:
            with _lock:
                _scan_target.remove((self, int(offset)))


def track(iterable: Iterable[Any], desc: str, total: int | None = None, *,
          unit: str = "batches") -> Iterator[Any]:
    """`iterable` with progress; `total` defaults to its `len` (or its `num_batches`)."""
    if total is None:
        total = num_items(iterable)
    with Progress(desc, total, unit=unit) as p:
        yield from p.track(iterable)


def num_items(iterable: Any) -> int | None:
    """len(iterable), else its `num_batches` attribute (set on the data pipelines' iterators),
    else None."""
    try:
        return len(iterable)
    except TypeError:
        return getattr(iterable, "num_batches", None)


def _on_scan_tick(step: Any) -> None:
    with _lock:
        if _scan_target:
            progress, offset = _scan_target[-1]
            progress.update_to(offset + int(step) + 1)


def scan_ticker(length: int, ticks: int = 100) -> Callable[[Any], None]:
    """For the body of a `lax.scan` of `length` steps: `tick(i)` reports step i (0-based) to
    the innermost `Progress.scan()` about `ticks` times per scan (a host callback every
    length / ticks steps, and at the last step). Without a receiver a tick does nothing."""
    import jax

    every = max(1, int(length) // max(int(ticks), 1))

    def tick(i: Any) -> None:
        due = jax.numpy.logical_or((i + 1) % every == 0, i == length - 1)
        jax.lax.cond(due, lambda j: jax.debug.callback(_on_scan_tick, j), lambda j: None, i)

    return tick
