"""Plain-text and markdown tables of stored results, for `landscape analyze` and `landscape info`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typing import Any, Optional, Sequence

from landscape import store
from landscape.results import CheckpointRecord

HEADERS = ("checkpoint", "step", "loss", "accuracy", "lambda_max", "lambda_k", "trace", "trace/n", "|J|_2 max", "HVPs",
           "seconds")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, markdown: bool = False) -> str:
    """Aligned columns, or a GitHub markdown table (a "|" inside a cell, as in |J|, is escaped)."""
    if markdown:
        def line(cells: Sequence[str]) -> str:
            return "| " + " | ".join(str(cell).replace("|", r"\|") for cell in cells) + " |"

        return "\n".join([line(headers), "|" + "|".join("---" for _ in headers) + "|", *map(line, rows)])
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [headers, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


#: how many characters of a text attribute `landscape info` shows (a file may hold megabytes in one)
SHOWN = 200


def shorten(value: Any, limit: int = SHOWN) -> str:
    """``str(value)``, or its first ``limit`` characters followed by how long it is, e.g. ``"abc... (104,857,600
    characters)"``."""
    text = str(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _number(value: Optional[float], digits: int = 5) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def record_row(record: CheckpointRecord) -> list[str]:
    """One table row: fit at the checkpoint, top and k-th eigenvalue, trace with its standard error, cost."""
    attrs, results = record.attrs, record.results
    eigen, trace, jacobian = results.get("eigen"), results.get("trace"), results.get("jacobian")
    matvecs = sum(getattr(r, "num_matvecs", 0) for r in results.values())
    k = len(eigen.values) if eigen is not None else 0
    return [
        record.name,
        "-" if record.step is None else str(record.step),
        _number(attrs.get("loss")),
        _number(attrs.get("accuracy"), 4),
        _number(eigen.values[0]) if k else "-",
        f"{_number(eigen.values[-1])} (k={k})" if k > 1 else "-",
        f"{trace.estimate:.5g} ± {trace.stderr:.2g}" if trace is not None else "-",
        _number(trace.normalized, 4) if trace is not None else "-",
        _number(jacobian.spectral_max, 4) if jacobian is not None and jacobian.spectral is not None else "-",
        str(matvecs),
        _number(attrs.get("seconds"), 3),
    ]


def results_table(path: str | Path, names: Optional[Sequence[str]] = None, *, markdown: bool = False) -> str:
    """The table of a results file's checkpoints (all, or those named), ordered by step."""
    records = store.read_results(path)
    chosen = [r for r in records.values() if names is None or r.name in names]
    return format_table(HEADERS, [record_row(r) for r in chosen], markdown=markdown)


def _describe_result(result: Any) -> str:
    kind = type(result).__name__
    if kind == "EigenResult":
        values = ", ".join(f"{v:.5g}" for v in result.values)
        return f"{len(result.values)} eigenvalues ({shorten(result.which)}): {values}"
    if kind == "TraceResult":
        return f"{result.estimate:.6g} ± {result.stderr:.2g} ({shorten(result.method)}, {result.num_matvecs} HVPs)"
    if kind == "JacobianResult":
        bound = f", layer-norm bound {result.lipschitz_upper:.4g}" if result.lipschitz_upper is not None else ""
        spectral = f"spectral mean {result.spectral_mean:.4g}, max {result.spectral_max:.4g}" \
            if result.spectral is not None else ""
        return f"{result.num_samples} samples ({shorten(result.outputs)}): {spectral}{bound}"
    if kind == "SurfaceResult":
        shape = "×".join(str(n) for n in result.loss.shape)
        finite = result.loss[np.isfinite(result.loss)]
        span = f"loss {finite.min():.4g}–{finite.max():.4g}" if finite.size else "nothing computed yet"
        extra = f", barrier {result.barrier:.4g} at α = {result.barrier_alpha:.3g}" if result.barrier is not None else ""
        if result.explained_variance:
            extra += ", explained variance " + ", ".join(f"{100 * share:.1f} %" for share in result.explained_variance)
        return f"{shorten(result.kind)}, {shape} grid, {span}, {result.missing} cells left{extra}"
    if kind == "DensityResult":
        return (f"{result.num_probes} probes × {result.num_steps} steps on [{result.grid[0]:.4g}, "
                f"{result.grid[-1]:.4g}], {len(result.grid)} grid points")
    if kind == "SharpnessResult":
        error = "" if result.stderr is None else f" ± {result.stderr:.2g}"
        return (f"{shorten(result.label)}: {result.value:.6g}{error} ({result.num_gradients} gradients, "
                f"{result.num_losses} losses)")
    return kind


def describe(path: str | Path) -> str:
    """What a results or run file holds: what kind of file it is (a run file names its training run and how many
    steps it took), versions, the run, then each checkpoint's provenance and results (per layer too); a long
    attribute is shortened (:func:`shorten`)."""
    root = {key: shorten(value) for key, value in store.root_attributes(path).items()}
    records = store.read_results(path)
    span, run_lines = _describe_run(path)
    kind = "results file" if span is None else f"{'run and results' if records else 'run'} file, {span}"
    lines = [f"{path}: landscape {kind}, format version {root.get('format_version')}",
             f"  created {root.get('created')}, modified {root.get('modified')}, landscape "
             f"{root.get('landscape_version')}, torch {root.get('torch_version')}, h5py {root.get('h5py_version')}"]
    lines.extend(run_lines)
    lines.extend(_describe_peers(path))
    if not records and len(lines) == 2:
        lines.append("  no checkpoints and no training run yet")
    for record in records.values():
        a = {key: shorten(value) for key, value in record.attrs.items()}
        lines.append(f"checkpoints/{shorten(record.name)}: step {a.get('step', '-')}, {a.get('path')} "
                     f"({a.get('format')}, sha256 {str(a.get('sha256', ''))[:12]}…)")
        if "data" in a:  # written by analyze (a surface alone keeps its provenance on the result)
            lines.append(f"  model {a.get('model_spec') or '(in the file)'}, {a.get('num_params')} parameters; "
                         f"data {a.get('data_description', a.get('data'))}; loss {a.get('loss_function')}; "
                         f"{a.get('dtype')} on {a.get('device')}, seed {a.get('seed')}")
        if "notes" in record.attrs:
            lines.append(f"  notes: {shorten('; '.join(map(str, record.attrs['notes'])))}")
        for metric, result in record.results.items():
            lines.append(f"  {metric}: {_describe_result(result)}")
        for layer, results in record.layers.items():
            summary = "; ".join(f"{m}: {_describe_result(r)}" for m, r in results.items())
            lines.append(f"  layers/{shorten(layer)}: {summary}")
    return "\n".join(lines)


def info(path: str | Path, *, markdown: bool = False) -> str:
    """What `landscape info` prints: :func:`describe`, then, when the file holds analysed checkpoints, their
    :func:`results_table` after a blank line."""
    text = describe(path)
    if store.read_results(path):
        text += "\n\n" + results_table(path, markdown=markdown)
    return text


def _describe_peers(path: str | Path) -> list[str]:
    """The rows of a peer benchmark (``/peers``, written by scripts/bench_peers.py): what they cover."""
    def read(handle: Any) -> Optional[tuple[dict[str, list[str]], Any]]:
        if "peers" not in handle:
            return None
        group = handle["peers"]
        plurals = {"workload": "workloads", "dtype": "dtypes", "task": "tasks", "library": "libraries"}
        return ({plural: [str(v) for v in group[name].asstr()[()]] for name, plural in plurals.items()
                 if name in group}, store.get_attrs(group).get("command", ""))

    found = store.read_file(path, read)  # retried while a training run appends to the file
    if found is None:
        return []
    columns, command = found
    covered = "; ".join(f"{plural} {', '.join(dict.fromkeys(values))}" for plural, values in columns.items())
    return [f"peers: {len(columns.get('tasks', []))} benchmark rows ({shorten(covered)}); drawn by `landscape "
            f"plot FILE --kind peers`", f"  command: {shorten(command)}"]


def _describe_run(path: str | Path) -> tuple[Optional[str], list[str]]:
    """What the file's training run is, e.g. ``a training run of 400 steps`` (None without a run), and lines: its
    settings and how it ended, its model and data, its first and last curvature records."""
    if not store.read_file(path, lambda handle: "run" in handle):
        return None, []
    run = store.read_run(path)  # a damaged run is a StoreError, not a file without a run
    settings = json.loads(run.attrs.get("settings", "{}"))
    steps = run.tables.get("run", {}).get("step", [])
    planned = settings.get("steps")
    finished = "stop_reason" in run.attrs
    done = int(run.attrs["final_step"]) if "final_step" in run.attrs else int(steps[-1]) if len(steps) else 0
    span = f"a training run of {done} steps{'' if finished else ' so far'}" + \
        ("" if planned in (None, done) else f" (of {shorten(planned)} planned)")
    lines = [f"run: {shorten(settings.get('optimizer'))} lr {shorten(settings.get('lr'))}, {len(steps)} steps "
             f"recorded; {shorten(run.attrs.get('stop_reason', 'not finished (killed or still running)'))}"]
    a = {key: shorten(value) for key, value in run.attrs.items()}
    if "model_spec" in a:
        lines.append(f"  model {a['model_spec']}, {a.get('num_params')} parameters; data "
                     f"{a.get('data_description', a.get('data'))}; loss {a.get('loss_function')}; {a.get('dtype')} on "
                     f"{a.get('device')}")
    curvature = run.tables.get("run/curvature", {})
    if "lambda_max" in curvature and len(curvature["lambda_max"]):
        first, last = curvature["lambda_max"][0], curvature["lambda_max"][-1]
        lines.append(f"  {len(curvature['lambda_max'])} curvature records: lambda_max {first:.4g} at step "
                     f"{curvature['step'][0]} → {last:.4g} at step {curvature['step'][-1]}; columns "
                     f"{', '.join(sorted(curvature))}")
    return span, lines
