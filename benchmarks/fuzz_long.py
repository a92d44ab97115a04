"""Long fuzzing run: the cases of tests/test_fuzz.py, many more of them, fresh randomness,
on the CI models plus the bundled transformers (and with --light the onnx wheel's real CNNs).

    python -m benchmarks.fuzz_long [--examples 2000] [--seed N] [--bytewise-share 0.2] [--light]

Prints how many mutated models were pruned (valid output checked) and how many were refused
(exit 2, one line, nothing written), and every contract violation with its reproducer: the
mutated model is saved under benchmarks/results/fuzz_failures/ with the flags that broke it.
Every case runs in a forked child, so a crash (ONNX Runtime has crashed on hostile models) is
reported like any other failure. Exit code 1 when any case failed.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import test_fuzz as tf  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=None, help="fixed seed (default: random)")
    ap.add_argument("--bytewise-share", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz_failures")
    ap.add_argument("--no-transformers", action="store_true",
                    help="only the CI models (not models/onnx/tx/*.onnx too)")
    ap.add_argument("--light", action="store_true",
                    help="also the real topologies shipped in the onnx wheel (slower)")
    a = ap.parse_args(argv)
    if not a.no_transformers:
        tf.MODELS.extend(sorted((ROOT / "models" / "onnx" / "tx").glob("*.onnx")))
    if a.light:
        import onnx

        light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
        tf.MODELS.extend(sorted(light.glob("*.onnx")))
    print(f"{len(tf.MODELS)} source models", flush=True)
    failures: list[tuple[str, str]] = []
    kinds: collections.Counter = collections.Counter()
    t0 = time.perf_counter()

    a.out.mkdir(parents=True, exist_ok=True)

    def save(name, steps, flags, data, why) -> str:
        key = hashlib.sha256(bytes(data)).hexdigest()[:12]
        (a.out / f"{key}.onnx").write_bytes(bytes(data))
        (a.out / f"{key}.txt").write_text(f"{name} {steps} {flags}\n{why}\n")
        return str(a.out / f"{key}.onnx")

    def one(case):
        """Each case runs in a forked child: a crash (ONNX Runtime has crashed on hostile
        models) is recorded with its reproducer instead of ending the run."""
        name, steps, data, flags = case
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            code, msg = 0, b""
            try:
                code = {"pruned": 0, "refused": 10}[tf.run_case(name, steps, data, flags)]
            except AssertionError as e:
                code, msg = 1, str(e).encode()
            except BaseException:  # noqa: BLE001
                code, msg = 2, traceback.format_exc().encode()
            os.write(w, msg[:60000])
            os._exit(code)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            msg = f.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        outcome = {0: "pruned", 10: "refused", 1: "FAILED", 2: "HARNESS-ERROR"}.get(code)
        if outcome is None:
            outcome = "CRASHED"
            msg = f"the process died: {'signal ' + signal.Signals(-code).name if code < 0 else code}"
        if outcome in ("FAILED", "HARNESS-ERROR", "CRASHED"):
            where = save(name, steps, flags, data, msg)
            failures.append((f"{outcome}: {name} {steps} {flags} -> {where}",
                             (msg.strip().splitlines() or [""])[-1][:300]))
        kinds[(steps[0], outcome)] += 1
        done = sum(kinds.values())
        if done % 100 == 0:
            print(f"  {done} cases, {len(failures)} failures, {time.perf_counter() - t0:.0f} s",
                  flush=True)

    n_bytes = int(a.examples * a.bytewise_share)
    for ks, n in ((tf.STRUCTURAL, a.examples - n_bytes), (tf.BYTEWISE, n_bytes)):
        if n <= 0:
            continue
        s = settings(max_examples=n, deadline=None, database=None, derandomize=False,
                     suppress_health_check=list(HealthCheck), phases=["generate"])
        test = given(tf.cases(kinds=tuple(ks)))(one)
        if a.seed is not None:
            from hypothesis import seed

            test = seed(a.seed)(test)
        try:
            s(test)()
        except Unsatisfiable:
            pass
    by_outcome = collections.Counter()
    for (_, outcome), c in kinds.items():
        by_outcome[outcome] += c
    total = sum(by_outcome.values())
    print(f"\n{total} mutated models in {time.perf_counter() - t0:.0f} s: "
          + ", ".join(f"{k} {v}" for k, v in sorted(by_outcome.items())))
    for kind in sorted({k for k, _ in kinds}):
        row = {o: c for (k, o), c in kinds.items() if k == kind}
        print(f"  {kind:18s} " + "  ".join(f"{o} {c}" for o, c in sorted(row.items())))
    for where, why in failures:
        print(f"{where}\n    {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
