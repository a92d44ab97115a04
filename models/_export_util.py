"""What both exporter scripts share: quiet exports and reproducible, path-free files."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Iterator

import onnx

EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "transformers")


@contextlib.contextmanager
def quiet_export(extra_loggers: tuple[str, ...] = ()) -> Iterator[None]:
    """Silence exporter chatter (deprecations, progress prints, missing-torchvision warnings);
    `extra_loggers`: other converters' loggers to quiet too.

    None of it is actionable here and it buries the summary table.
    """
    loggers = [logging.getLogger(n) for n in EXPORTER_LOGGERS + tuple(extra_loggers)]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def strip_metadata(model: onnx.ModelProto) -> None:
    """Drop exporter debug metadata (stack traces, absolute paths, FX dumps) so files are small,
    reproducible and path-free."""

    def strip_graph(graph: onnx.GraphProto) -> None:
        graph.doc_string = ""
        for seq in (graph.input, graph.output, graph.value_info):
            for vi in seq:
                del vi.metadata_props[:]
                vi.doc_string = ""
        for init in graph.initializer:
            del init.metadata_props[:]
            init.doc_string = ""
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
            for attr in node.attribute:
                if attr.HasField("g"):
                    strip_graph(attr.g)
                for g in attr.graphs:
                    strip_graph(g)

    model.doc_string = ""
    del model.metadata_props[:]
    strip_graph(model.graph)
    for fn in model.functions:
        del fn.metadata_props[:]
        fn.doc_string = ""
        for node in fn.node:
            del node.metadata_props[:]
            node.doc_string = ""
