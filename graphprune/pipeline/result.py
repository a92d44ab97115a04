"""The result of a prune: the pruned model, its report, and how to write it."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx

from ..analysis.graph import DependencyGraph
from ..ir import WEIGHTS
from ..ir.files import check_outputs, save_model
from ..ir.storage import WeightStore
from ..runtime import validate as runtime_validate
from ..runtime.session import trim_heap
from ..transforms.select import Plan


@dataclass
class PruneResult:
    """A pruned model and its report.

    For a model whose weights stay on disk (external data), `model` references them and `store`
    holds the rewritten tensors as arrays; `save` streams both into the output's data file and
    then points `model` and `store` at it (the arrays are released). A prune run with
    `defer_validation` is validated when it is saved, from the written files, before they are
    renamed into place (`report["fidelity"]` is filled then).
    """

    model: onnx.ModelProto
    report: dict
    graph: DependencyGraph
    plan: Plan
    store: WeightStore | None = None
    pending: tuple | None = None  # reference (feeds, outputs) while validation waits for files
    source: str | None = None  # the input file
    external: bool = False  # the input kept its weights in external data: so does the output
    scores: dict = field(default_factory=dict)  # group id -> the criterion's unit scores
    source_files: list | None = None  # the input's external data files, when known
    copies: dict = field(default_factory=dict)  # untied constant copy -> the constant it copies
    plan_source: Callable[[], dict] | None = None  # makes plan_document when first asked
    _plan_document: dict | None = None

    @property
    def plan_document(self) -> dict | None:
        """The kept units of every group, as --save-plan writes them (made when first asked:
        it names the model by a hash, which costs as much as writing the model)."""
        if self._plan_document is None and self.plan_source is not None:
            self._plan_document = self.plan_source()
        return self._plan_document
    provider: str = "CPUExecutionProvider"  # of the validation run at save time

    @property
    def prune_plan(self):
        """The run's plan as an editable `PrunePlan` (for `graphprune.apply`)."""
        from .plans import PrunePlan

        return PrunePlan(self.plan_document)

    def save_plan(self, path: str | os.PathLike) -> Path:
        """Write the plan (every group's kept units and the model's fingerprint) as JSON."""
        return self.prune_plan.save(path)

    def save(self, path: str | os.PathLike, external_data: bool = False,
             check: Callable[[str], None] | None = None) -> Path:
        """Write the model atomically (see `graphprune.ir.files.save_model`), validating the
        written files first when validation was deferred. `check(tmp)` is then called with the
        written model's temporary path before it is renamed into place (to measure the written
        files; an exception leaves nothing written); its time is not counted as writing."""
        t0 = time.perf_counter()
        p = Path(path)
        check_outputs(self.source, p, source_files=self.source_files)
        spent = {"validate": 0.0, "check": 0.0}
        ref = self.pending

        def on_written(tmp: str) -> None:
            trim_heap()  # the rewritten weights' arrays were released when they were written
            t1 = time.perf_counter()
            if ref is not None:
                self.report["fidelity"] = runtime_validate.validate_file(
                    tmp, ref, low_memory=self.store is not None, provider=self.provider)
            t2 = time.perf_counter()
            spent["validate"] = t2 - t1
            if check is not None:
                try:
                    check(tmp)
                finally:
                    spent["check"] = time.perf_counter() - t2

        token = WEIGHTS.set(self.store)
        try:
            size = save_model(self.model, p, external_data=external_data or self.external,
                              store=self.store,
                              validate=on_written if ref is not None or check else None)
        finally:
            WEIGHTS.reset(token)
        self.pending = None
        t = self.report["timings_s"]
        t["validate"] = round(t.get("validate", 0.0) + spent["validate"], 4)
        self.report["output"] = str(p)
        self.report["file_bytes"]["after"] = size
        t["write"] = round(time.perf_counter() - t0 - spent["validate"] - spent["check"], 4)
        return p
