"""`landscape analyze`: argument parsing for the curvature of saved checkpoints (the work is
:func:`landscape.analysis.analyze`)."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from landscape.analysis import SHARPNESS_MEASURES
from landscape.cli.options import (DTYPES, add_input_arguments, add_precision_arguments, command_line, load_inputs,
                                   load_test_split)
from landscape.distributed import Runtime, run_launched
from landscape.linalg.trace import METHODS as TRACE_METHODS
from landscape.operators.factory import CURVATURES

ANALYZE_EXAMPLE = """\
examples:
  landscape analyze model.pt --model mlp --data digits
  landscape analyze runs/ckpts/ --model mypkg.nets:resnet18 --model-kwargs '{"num_classes": 10}' \\
      --data train.npz --batch-size 512 --metrics eigs,trace --top-k 10 --dtype float64 -o results.h5
  landscape analyze "ckpt_*.pt" --model mlp --data digits --per-layer -o results.h5 --resume
  landscape analyze "ckpt_*.pt" --model mlp --data digits --metrics eigs,trace,sharpness --rho 0.05 \\
      --sharpness worst,average --adaptive -o results.h5   # adaptive worst- and average-case sharpness
  landscape analyze my-gpt2/ --data tokens.npy --loss next-token   # a save_pretrained folder (pip install ".[hf]")
  landscape analyze gpt.pt --data train.bin --seq-len 128 --subset 512 --batch-size 16   # a uint16 token stream

CHECKPOINT may be a file, a folder (every checkpoint file in it) or a quoted glob; several are analysed in order of
their training step. State dicts need --model; checkpoints written by `landscape train` of a built-in model carry
their architecture, and so does a Hugging Face save_pretrained folder (config.json and weights: one checkpoint,
built through transformers). Nothing in a file runs code unless --trust-checkpoint: TorchScript files and
torch.export programs (.pt2) need it, and so do pickled objects, a model factory a checkpoint names instead of
--model, and a Hugging Face config whose auto_map names code of its own."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """`landscape analyze`: every option, with its default, in --help."""
    p = sub.add_parser(
        "analyze",
        help="Hessian eigenvalues, trace and spectral density of saved checkpoints, into an HDF5 file",
        description="Load each checkpoint, compute the Hessian of the mean loss over the data (matrix-free), and add "
        "its top eigenvalues (Lanczos), trace (Krylov-deflated Hutchinson) and spectral density (stochastic Lanczos "
        "quadrature) to an HDF5 results file, one group per checkpoint; with --metrics sharpness also worst- and "
        "average-case sharpness and other flatness measures. Prints a summary table at the end.",
        epilog=ANALYZE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help="checkpoint files, folders or globs; a save_pretrained "
                   "folder is one checkpoint")
    add_input_arguments(p, exact="the Hessian")
    p.add_argument("--metrics", default="eigs,trace,density", help="comma-separated subset of eigs,trace,density,"
                   "jacobian,sharpness (default: eigs,trace,density); jacobian: per-sample input-output Jacobian norms "
                   "and, for plain feed-forward nets, the product of the layers' spectral norms (a Lipschitz upper "
                   "bound); sharpness: the flatness measures of --sharpness, of the whole model")
    p.add_argument("--curvature", default="hessian", choices=CURVATURES, help="the matrix whose eigenvalues, trace "
                   "and density are computed: the loss Hessian, the generalized Gauss-Newton matrix, the Fisher "
                   "(labels sampled from the model) or the empirical Fisher (the data's labels) (default: hessian)")
    p.add_argument("--jacobian-outputs", default="logits", choices=("logits", "probabilities"),
                   help="differentiate the logits or the softmax probabilities (default: logits)")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="number of top eigenvalues (default: 5)")
    p.add_argument("--tol", type=float, default=1e-6, help="relative residual at which Lanczos stops (default: 1e-6)")
    p.add_argument("--trace-matvecs", type=int, default=99, metavar="M", help="Hessian-vector products for the "
                   "trace (default: 99)")
    p.add_argument("--trace-method", default="krylov", choices=TRACE_METHODS, help="trace estimator (default: "
                   "krylov)")
    p.add_argument("--density-probes", type=int, default=10, metavar="P", help="SLQ probe vectors (default: 10)")
    p.add_argument("--density-steps", type=int, default=80, metavar="S", help="Lanczos steps per SLQ probe "
                   "(default: 80)")
    p.add_argument("--max-basis", type=int, metavar="N", help="keep at most N parameter-space vectors: Lanczos "
                   "restarts from the wanted Ritz vectors when its basis is full (default: max(40, 3·K)), and the "
                   "density runs without reorthogonalization when P × S is more than N (about 6·P vectors at the peak "
                   "instead of P·S); each vector is 4 bytes per parameter in float32")
    p.add_argument("--per-layer", action="store_true", help="repeat the metrics for each parameter block: each "
                   "module's parameters, a transformer's embedding, attention query/key/value/output (packed "
                   "projections split), each MLP layer, norm and head (landscape plot --kind blocks draws them)")
    p.add_argument("--save-vectors", action="store_true", help="store the top eigenvectors too (k × parameters)")
    p.add_argument("--compile", action="store_true", help="run the Hessian-vector product through torch.compile "
                   "(forward-over-reverse): the first products pay seconds to a minute of compilation; worth it for "
                   "large models the built-in layerwise path does not cover, on GPU above all")
    sharp = p.add_argument_group("sharpness and flatness (with --metrics sharpness)")
    sharp.add_argument("--sharpness", default="worst,average", metavar="MEASURES", help="comma-separated subset of "
                       f"{','.join(SHARPNESS_MEASURES)} (default: worst,average). worst: the largest loss increase "
                       "L(θ+δ) − L(θ) over perturbations ‖δ‖₂ ≤ ρ (what SAM minimizes), found by gradient ascent; "
                       "average: the mean increase over Gaussian δ ~ N(0, ρ²I), with its standard error; fisher-rao: "
                       "the Fisher-Rao norm, mean over samples of ⟨θ, ∇ℓᵢ⟩²; relative-flatness: the Hessian trace of "
                       "the last layer's weights weighted by their inner products (Petzka et al. 2021). The last two "
                       "do not change when a ReLU net's layers are rescaled")
    sharp.add_argument("--rho", type=float, default=0.05, help="radius ρ of the worst- and average-case "
                       "perturbations (relative to |θ| with --adaptive) (default: 0.05)")
    sharp.add_argument("--adaptive", action="store_true", help="adaptive worst and average sharpness: perturbations "
                       "scaled weight by weight by |θ| (δ = |θ| ⊙ u, ‖u‖₂ ≤ ρ), which rescaling a ReLU net's layers "
                       "leaves unchanged, instead of the plain ones")
    sharp.add_argument("--sharpness-steps", type=int, default=10, metavar="N", help="gradient ascent steps per "
                       "start of worst-case sharpness (default: 10)")
    sharp.add_argument("--sharpness-restarts", type=int, default=3, metavar="R", help="starts of the worst-case "
                       "ascent: SAM's gradient step, then random ones; the best is kept (default: 3)")
    sharp.add_argument("--sharpness-samples", type=int, default=32, metavar="S", help="Gaussian perturbations drawn "
                       "for average-case sharpness (default: 32)")
    sharp.add_argument("--chunk-size", type=int, metavar="M", help="m-sharpness: the worst case of each M-sample "
                       "chunk of the data, averaged over the chunks, as SAM sees it with batches of M (default: the "
                       "whole data at once)")
    add_precision_arguments(p, dtype_help="precision of the curvature")
    p.add_argument("--seed", type=int, default=0, help="seed for every random probe and --subset (default: 0)")
    p.add_argument("-o", "--output", default="results.h5", metavar="FILE", help="HDF5 results file; created, or "
                   "added to (default: results.h5)")
    p.add_argument("--resume", action="store_true", help="skip checkpoints whose results the output already holds")
    p.add_argument("--no-test", action="store_true", help="do not record the test split's loss and accuracy (by "
                   "default, when --split is train and the data has a test split, e.g. digits or a file with X_test, "
                   "each checkpoint's test loss and accuracy are recorded too: one pass over the test data)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")


def _names(text: str) -> tuple[str, ...]:
    """The names of a comma-separated list, stripped, empty ones dropped."""
    return tuple(name.strip() for name in text.split(",") if name.strip())


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Analyse in this process, or, launched by torchrun, over every rank's shard (rank 0 writes and prints)."""
    return run_launched(lambda device, runtime: _analyze(args, argv, device, runtime=runtime), args.device)


def _analyze(args: argparse.Namespace, argv: Sequence[str], device: Optional[str], *, runtime: Runtime) -> int:
    """One process's part: the settings the options give, :func:`landscape.analysis.analyze`, and the summary table
    (printed by the writing process)."""
    from landscape.analysis import AnalysisSettings, analyze
    from landscape.compare import sharpness_table
    from landscape.report import results_table
    from landscape.store import read_results

    settings = AnalysisSettings(
        metrics=_names(args.metrics),
        top_k=args.top_k, tol=args.tol, trace_matvecs=args.trace_matvecs, trace_method=args.trace_method,
        density_probes=args.density_probes, density_steps=args.density_steps, per_layer=args.per_layer,
        dtype=DTYPES[args.dtype], device=device, seed=args.seed, save_vectors=args.save_vectors,
        curvature=args.curvature, jacobian_outputs=args.jacobian_outputs, compile=args.compile,
        max_basis=args.max_basis, rho=args.rho, sharpness=_names(args.sharpness), adaptive=args.adaptive,
        sharpness_steps=args.sharpness_steps, sharpness_restarts=args.sharpness_restarts,
        sharpness_samples=args.sharpness_samples, chunk_size=args.chunk_size,
    )
    model_kwargs, data, loss = load_inputs(args)
    test_data = load_test_split(args)
    writer = runtime.is_writer
    say = None if args.quiet or not writer else (lambda line: print(line, file=sys.stderr))
    summaries = analyze(
        args.checkpoints, data=data, loss=loss, output=args.output, settings=settings, model_spec=args.model,
        model_kwargs=model_kwargs, trust=args.trust_checkpoint, resume=args.resume,
        command=command_line(argv), progress=False if args.quiet else None,
        report=say, note=(lambda line: print(line, file=sys.stderr)) if writer else None, runtime=runtime,
        test_data=test_data,
    )
    if writer:
        if summaries:
            names = [s.name for s in summaries]
            print(results_table(args.output, names))
            records = read_results(args.output)  # in the order of the table above: by step
            measures = sharpness_table({name: record.results for name, record in records.items() if name in names})
            if measures is not None:
                print(measures)
        print(f"results: {args.output}")
    return 0
