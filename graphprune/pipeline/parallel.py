"""Independent jobs (the ratios of a sweep, the models of a batch) run side by side.

`run_jobs(fn, jobs, shared, workers, scheduler)` calls `fn(shared, *args)` for every `args` of
`jobs` and returns the results in order:

- `workers` = 1 (or a single job): in this process, one after the other;
- `workers` > 1: a local process pool (forked on Linux, so `shared`, e.g. a sweep's analyzed
  and scored state, is inherited rather than copied);
- `scheduler` = "tcp://HOST:PORT": the jobs go to an existing Dask distributed cluster
  (`pip install graphprune[dask]`); `shared` is sent to the workers once, results come back
  to this process. Paths in the jobs must be readable (and output folders writable) under the
  same names on the workers, e.g. a shared file system.

A job that raises stops the run with its error (the others are cancelled).
"""
from __future__ import annotations

import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

from ..errors import UserError
from ..ir.writer import install_signal_handlers

_SHARED: dict = {}
MAX_JOBS = 4096


def _init(shared) -> None:
    _SHARED["value"] = shared
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    install_signal_handlers()  # SIGTERM ends a worker's job cleanly (no staged files left)


def _call(fn: Callable, args: tuple):
    return fn(_SHARED.get("value"), *args)


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def run_jobs(fn: Callable, jobs: list[tuple], shared=None, workers: int = 1,
             scheduler: str | None = None) -> list:
    """Results of `fn(shared, *args)` for every `args` in `jobs`, in order (see the module
    docstring)."""
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_JOBS:
        raise UserError(f"--jobs must be in [1, {MAX_JOBS}], got {workers}")
    if scheduler:
        return _on_dask(fn, jobs, shared, scheduler)
    if workers == 1 or len(jobs) <= 1:
        return [fn(shared, *args) for args in jobs]
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                             mp_context=multiprocessing.get_context(method),
                             initializer=_init, initargs=(shared,)) as pool:
        futures = [pool.submit(_call, fn, args) for args in jobs]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _on_dask(fn: Callable, jobs: list[tuple], shared, scheduler: str) -> list:
    try:
        from distributed import Client
    except ImportError as e:
        raise UserError("--scheduler needs Dask distributed: pip install 'graphprune[dask]'"
                        ) from e
    try:
        client = Client(scheduler, timeout=30, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise UserError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({e})") from e
    try:
        data = client.scatter(shared, broadcast=True) if shared is not None else None
        futures = [client.submit(fn, data, *args, pure=False) for args in jobs]
        return client.gather(futures)
    finally:
        client.close()
