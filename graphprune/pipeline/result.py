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
from ..ir.cache import IoChanges
from ..ir.files import check_outputs, stage_model
from ..ir.shapes import inference_copy
from ..ir.load import data_files
from ..ir.writer import OutputSet
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
    inputs: object = None  # the InputPlan the runs used (sizes and values of the inputs)
    io: IoChanges | None = None  # how the graph's inputs/outputs changed (KV-cache heads)

    @property
    def prune_plan(self):
        """The run's plan as an editable `PrunePlan` (for `graphprune.apply`)."""
        from .plans import PrunePlan

        return PrunePlan(self.plan_document)

    def save_plan(self, path: str | os.PathLike) -> Path:
        """Write the plan (every group's kept units and the model's fingerprint) as JSON."""
        return self.prune_plan.save(path)

    def save_folder(self, folder: str | os.PathLike, external_data: bool = False) -> Path:
        """Write a complete model folder: the pruned model under the input's file name, the
        configuration files beside the input (genai_config.json, config.json) rewritten to
        the pruned sizes, and the input folder's other files (tokenizer, ...) copied. See
        `graphprune.pipeline.folder`."""
        from .folder import save_folder

        return save_folder(self, folder, external_data=external_data)

    def save(self, path: str | os.PathLike, external_data: bool = False,
             outputs: OutputSet | None = None,
             check: Callable[[str], None] | None = None) -> Path:
        """Write the model (and its data file) at `path`. With `outputs`, the files are staged
        in that set and land with its other files when it commits (a command's report and HTML
        go in the same set); without, they are committed at once. When validation was
        deferred, the staged files are validated before anything is renamed. `check(staged)`
        is then called with the staged model's path (to measure the written files; an
        exception leaves nothing written); its time is not counted as writing."""
        if outputs is None:
            with OutputSet(protect=self.protected(path)) as out:
                return self.save(path, external_data, outputs=out, check=check)
        t0 = time.perf_counter()
        check_outputs(self.source, path, source_files=self.source_files)
        spent = {"validate": 0.0, "check": 0.0}
        ref = self.pending

        def on_staged(tmp: str) -> None:
            trim_heap()  # the rewritten weights' arrays were released when they were written
            t1 = time.perf_counter()
            if ref is not None:
                fid = runtime_validate.validate_file(
                    tmp, ref, low_memory=self.store is not None, provider=self.provider,
                    io=self.io, original=self.source, checked=inference_copy(self.model))
                self.report["fidelity"] = fid
                if fid.get("input_faults"):
                    self.report["input_faults"] = fid["input_faults"]
            t2 = time.perf_counter()
            spent["validate"] = t2 - t1
            if check is not None:
                try:
                    check(tmp)
                finally:
                    spent["check"] = time.perf_counter() - t2

        token = WEIGHTS.set(self.store)
        try:
            size = stage_model(outputs, self.model, path,
                               external_data=external_data or self.external, store=self.store,
                               validate=on_staged if ref is not None or check else None)
        finally:
            WEIGHTS.reset(token)
        self.pending = None
        t = self.report["timings_s"]
        t["validate"] = round(t.get("validate", 0.0) + spent["validate"], 4)
        self.report["output"] = str(Path(path))
        self.report["file_bytes"]["after"] = size
        t["write"] = round(time.perf_counter() - t0 - spent["validate"] - spent["check"], 4)
        return Path(path)

    def protected(self, path: str | os.PathLike | None = None) -> list[str]:
        """The files no output of this result may replace or remove: the input model and its
        external data files."""
        if not self.source:
            return []
        files = self.source_files
        if files is None:
            files = data_files(self.source)
        return [self.source, *map(str, files)]
