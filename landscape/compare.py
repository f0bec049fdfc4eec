"""Flatness measures of several checkpoints or training runs side by side, read from the toolkit's HDF5 files.

:func:`flatness_rows` turns each file into rows: one per analysed checkpoint of a results file (``landscape
analyze``) and one per training run file (``landscape train``: its last curvature record). Each row carries the
sharpness λmax, the trace with its standard error and per parameter, the largest input-output Jacobian spectral
norm, and the loss and accuracy; for a run also λmax·η/2, which is 1 at gradient descent's edge of stability (λmax =
2/η). :func:`flatness_table` prints them. Nothing is recomputed: a measure that was not recorded is None.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from landscape import store
from landscape.errors import OptionError, StoreError
from landscape.report import format_table
from landscape.store import CheckpointRecord, RunRecord

PathLike = Union[str, os.PathLike]

__all__ = ["FlatnessRow", "flatness_rows", "flatness_table", "source_labels", "TABLE_HEADERS"]

TABLE_HEADERS = ("source/name", "step", "λmax", "λmax·η/2", "trace ± se", "trace/n", "|J|₂ max", "train loss",
                 "train acc", "test loss", "test acc")
RUN_NAME = "run"


@dataclass(frozen=True)
class FlatnessRow:
    """The flatness measures of one checkpoint (results file) or of a run's last curvature record (run file).

    ``source`` is the file as given; ``name`` the checkpoint's group name, or ``"run"``. ``sharpness_ratio`` is
    λmax·η/2 with η the run's base learning rate (its stored settings; a schedule is not followed): 1 at the edge of
    stability of plain gradient descent (momentum and adaptive methods have other thresholds), None for checkpoints,
    whose files do not record η. ``lr`` is that η (None for checkpoints). Missing measures are None.
    """

    source: str
    name: str
    step: Optional[int]
    lambda_max: Optional[float]
    sharpness_ratio: Optional[float]
    trace: Optional[float]
    trace_stderr: Optional[float]
    trace_per_param: Optional[float]
    jacobian_max: Optional[float]
    train_loss: Optional[float]
    train_accuracy: Optional[float]
    test_loss: Optional[float]
    test_accuracy: Optional[float]
    lr: Optional[float] = None

    @property
    def trace_per_param_stderr(self) -> Optional[float]:
        """The standard error of ``trace_per_param`` (the trace's, divided by the number of parameters)."""
        if self.trace_stderr is None or self.trace_per_param is None or not self.trace:
            return None
        return self.trace_stderr * self.trace_per_param / self.trace


def flatness_rows(paths: Sequence[PathLike]) -> list[FlatnessRow]:
    """The rows of every file, in the order given (a file's checkpoints by step, then its run).

    :class:`StoreError` names a file that is missing, not a landscape file, or holds neither analysed checkpoints
    nor a training run with curvature records."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise OptionError("compare needs at least one results or run file")
    return [row for path in paths for row in _file_rows(Path(path))]


def _file_rows(path: Path) -> list[FlatnessRow]:
    """One row per analysed checkpoint, plus one for the training run when the file holds one."""
    rows = [_checkpoint_row(str(path), record) for record in store.read_results(path).values()]
    run = _read_run_if_any(path)
    if run is not None and _last_index(run) is not None:
        rows.append(_run_row(str(path), run))
    if not rows:
        what = "a training run without curvature records (train with --track-every N, N > 0)" if run is not None \
            else "no training run"
        raise StoreError(f"{path} has nothing to compare: no analysed checkpoints (landscape analyze) and {what}")
    return rows


def _read_run_if_any(path: Path) -> Optional[RunRecord]:
    has_run = store.read_file(path, lambda handle: "run" in handle)  # retried while a run appends to the file
    return store.read_run(path) if has_run else None


# -- results files (landscape analyze) ---------------------------------------------------------------------------
def _checkpoint_row(source: str, record: CheckpointRecord) -> FlatnessRow:
    """λmax, trace and Jacobian from the stored results; loss and accuracy from the attributes, filed under the split
    that was analysed."""
    eigen, trace, jacobian = (record.results.get(key) for key in ("eigen", "trace", "jacobian"))
    fit = {"loss": _float(record.attrs.get("loss")), "accuracy": _float(record.attrs.get("accuracy"))}
    on_test = _analysed_split(record.attrs) == "test"
    return FlatnessRow(
        source=source, name=record.name, step=_int(record.step),
        lambda_max=float(np.max(eigen.values)) if eigen is not None and len(eigen.values) else None,
        sharpness_ratio=None,
        trace=float(trace.estimate) if trace is not None else None,
        trace_stderr=float(trace.stderr) if trace is not None else None,
        trace_per_param=float(trace.normalized) if trace is not None else None,
        jacobian_max=jacobian.spectral_max if jacobian is not None else None,
        train_loss=None if on_test else fit["loss"], train_accuracy=None if on_test else fit["accuracy"],
        test_loss=fit["loss"] if on_test else None, test_accuracy=fit["accuracy"] if on_test else None,
    )


def _analysed_split(attrs: Mapping[str, Any]) -> str:
    """"test" when the data description's tags name the test split (``digits[test; ...]``), else "train" (the
    default split of ``landscape analyze``)."""
    description = str(attrs.get("data_description", ""))
    tags = description.partition("[")[2].partition("]")[0]
    return "test" if "test" in (tag.strip() for tag in tags.split(";")) else "train"


# -- run files (landscape train) ---------------------------------------------------------------------------------
def _last_index(run: RunRecord) -> Optional[int]:
    steps = run.tables.get("run/curvature", {}).get("step")
    return None if steps is None or len(steps) == 0 else len(steps) - 1


def _run_row(source: str, run: RunRecord) -> FlatnessRow:
    """The run's last curvature record (a column added after the first records counts only if it reaches it)."""
    table = run.tables["run/curvature"]
    last = _last_index(run)

    def value(column: str) -> Optional[float]:
        data = table.get(column)
        return float(data[last]) if data is not None and len(data) == last + 1 else None

    lambda_max, trace, lr = value("lambda_max"), value("trace"), _learning_rate(run.attrs)
    num_params = _int(run.attrs.get("num_params"))
    return FlatnessRow(
        source=source, name=RUN_NAME, step=int(table["step"][last]), lambda_max=lambda_max,
        sharpness_ratio=lambda_max * lr / 2 if lambda_max is not None and lr is not None else None,
        trace=trace, trace_stderr=value("trace_stderr"),
        trace_per_param=trace / num_params if trace is not None and num_params else None,
        jacobian_max=value("jacobian_max"),
        train_loss=value("train_loss"), train_accuracy=value("train_accuracy"),
        test_loss=value("test_loss"), test_accuracy=value("test_accuracy"), lr=lr,
    )


def _learning_rate(attrs: Mapping[str, Any]) -> Optional[float]:
    """The base learning rate η of the run's stored settings (None when absent or not positive)."""
    try:
        settings = json.loads(attrs.get("settings") or "{}")
    except (TypeError, json.JSONDecodeError):
        return None
    lr = settings.get("lr") if isinstance(settings, dict) else None
    return float(lr) if isinstance(lr, (int, float)) and lr > 0 else None


def _float(value: Any) -> Optional[float]:
    return None if value is None else float(value)


def _int(value: Any) -> Optional[int]:
    return None if value is None else int(value)


# -- the table ---------------------------------------------------------------------------------------------------
def source_labels(sources: Sequence[str]) -> dict[str, str]:
    """A short label per distinct source: its file name, or as many trailing path parts as tell it from the others."""
    parts = {source: Path(source).parts or (source,) for source in dict.fromkeys(sources)}

    def label(source: str) -> str:
        own = parts[source]
        depth = next((d for d in range(1, len(own)) if all(p[-d:] != own[-d:] for s, p in parts.items()
                                                            if s != source)), len(own))
        return str(Path(*own[-depth:]))

    return {source: label(source) for source in parts}


def _number(value: Optional[float], digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def _trace_cell(row: FlatnessRow) -> str:
    if row.trace is None:
        return "-"
    if row.trace_stderr is None or not math.isfinite(row.trace_stderr):
        return _number(row.trace, 5)
    return f"{row.trace:.5g} ± {row.trace_stderr:.2g}"


def flatness_table(rows: Sequence[FlatnessRow], markdown: bool = False) -> str:
    """An aligned text table (or a GitHub markdown table) with a line per row; "-" where a measure is missing."""
    labels = source_labels([row.source for row in rows])
    cells = [[f"{labels[row.source]}:{row.name}", "-" if row.step is None else str(row.step),
              _number(row.lambda_max), _number(row.sharpness_ratio, 3), _trace_cell(row),
              _number(row.trace_per_param), _number(row.jacobian_max), _number(row.train_loss),
              _number(row.train_accuracy), _number(row.test_loss), _number(row.test_accuracy)]
             for row in rows]
    return format_table(TABLE_HEADERS, cells, markdown=markdown)
