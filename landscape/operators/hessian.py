"""The Hessian of the mean loss over a data set, applied matrix-free to flat parameter-space vectors.

:class:`ModelOperator` holds what every curvature operator of a model, a loss and data shares (parameter selection,
copies on the operator's dtype and device, batch streaming with exact size weighting, clear failures on NaN);
:class:`HessianOperator` and :mod:`landscape.operators.ggn`'s Gauss-Newton and Fisher operators build on it.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any, Callable, Iterator, NamedTuple, Optional

import torch
from torch import nn
from torch.func import grad, jvp, vmap

from landscape.errors import LossError, OptionError
from landscape.operators.base import LinearOperator
from landscape.operators import layerwise
from landscape.operators.functional import eval_mode, evaluate_loss, is_scripted
from landscape.operators.batches import checked_batches, is_single_batch, iterate_batches, move_batch
from landscape.operators.params import FlatLayout, ParamFilter, select_parameters

LossFn = Callable[..., torch.Tensor]
PRODUCTS = ("auto", "layerwise", "reverse", "forward")


class GradientGraph(NamedTuple):
    """A batch's gradient with its autograd graph: ``grads[j]`` is the gradient of ``leaves[live[j]]``."""

    leaves: tuple[torch.Tensor, ...]
    grads: tuple[torch.Tensor, ...]
    live: tuple[int, ...]


class ModelOperator(LinearOperator):
    """A curvature operator of a model, a loss and data over the model's selected parameters θ (shared machinery).

    Selects the parameters (``params``, see :func:`~landscape.operators.params.select_parameters`), copies them and
    every other parameter and buffer to ``dtype``/``device`` (the model itself is never modified), caches a single
    ``(X, y)`` batch on the device, streams any other data batch by batch, and averages the per-batch products
    weighted by batch size, so the operator is exact for any batching. Subclasses implement
    ``_product(batch, blocks)``: the product of one (already moved) batch with the per-parameter column blocks.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        data: Any,
        *,
        params: ParamFilter = None,
        dtype: Optional[torch.dtype] = None,
        device: Optional[torch.device | str] = None,
    ) -> None:
        self.names = select_parameters(model, params)
        named = dict(model.named_parameters())
        first = named[self.names[0]]
        device = torch.device(device) if device is not None else first.device
        dtype = dtype if dtype is not None else first.dtype
        if not dtype.is_floating_point:
            raise OptionError(f"dtype must be a floating-point type, got {dtype}")
        self.layout = FlatLayout(named[n].shape for n in self.names)
        super().__init__(self.layout.numel, dtype, device)
        self.model = model
        self.loss = loss
        self.data = data
        self._setup()
        self.params = tuple(named[n].detach().to(device=self.device, dtype=dtype) for n in self.names)
        self._fixed = {
            name: move_batch(t.detach(), self.device, dtype)
            for name, t in list(model.named_parameters()) + list(model.named_buffers())
            if name not in self.names
        }
        self._single = is_single_batch(data)
        self._cached_batch = move_batch(tuple(data), self.device, dtype) if self._single else None
        iterate_batches(data)  # fails now, not at the first product, on a data set that is visibly empty

    def _setup(self) -> None:
        """Subclass options, checked once the model, loss and data are set and before anything is copied."""

    # -- the loss as a function of the selected parameters -------------------------------------------------
    def _state(self, params: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The model's full state (parameters and buffers) with the selected parameters replaced by ``params``."""
        state = dict(self._fixed)
        state.update(zip(self.names, params))
        return state

    def batch_loss(self, params: tuple[torch.Tensor, ...], batch: Any) -> torch.Tensor:
        """Mean loss of one (already moved) batch with the selected parameters replaced by ``params``."""
        return self._check_scalar(evaluate_loss(self.model, self.loss, self._state(params), batch))

    @staticmethod
    def _check_scalar(value: Any) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise LossError(f"the loss must return a scalar (the batch mean), got {shape}; reduce it with .mean()")
        return value

    def _batches(self) -> Iterator[tuple[Any, int]]:
        if self._single:
            yield self._cached_batch, int(self._cached_batch[0].shape[0])
            return
        for batch, size in checked_batches(self.data):
            yield move_batch(batch, self.device, self.dtype), size

    @staticmethod
    def _require_finite(values: torch.Tensor) -> torch.Tensor:
        """``values`` (a batch's loss, or its products) unchanged, or a LossError if any entry is NaN or inf."""
        if not bool(torch.isfinite(values).all()):
            raise LossError("the loss or its curvature is not finite on a batch (NaN or inf in the data or model?)")
        return values

    # -- products -------------------------------------------------------------------------------------------
    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        blocks = self.layout.split(V)
        total = None
        count = 0
        for batch, size in self._batches():
            part = self._product(batch, blocks)
            total = part.mul_(size) if total is None else total.add_(part, alpha=size)
            count += size
        return total.div_(count)

    @abstractmethod
    def _product(self, batch: Any, blocks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The (k, n) product of one batch's curvature with the columns given per parameter in ``blocks``."""

    def _write(self, out: torch.Tensor, cols: tuple[Optional[torch.Tensor], ...]) -> None:
        """Copy per-parameter product columns into the flat output (unused parameters stay zero)."""
        parts = self.layout.split(out)
        for part, col in zip(parts, cols):
            if col is not None:
                part.copy_(col)

    # -- conveniences ----------------------------------------------------------------------------------------
    def gradient(self) -> torch.Tensor:
        """The flat gradient of the mean loss over the data at the operator's parameters (one pass, no graph kept)."""
        total = torch.zeros(self.shape[0], dtype=self.dtype, device=self.device)
        count = 0
        for batch, size in self._batches():
            leaves = tuple(p.detach().requires_grad_() for p in self.params)
            with torch.enable_grad():
                value = self._require_finite(self.batch_loss(leaves, batch))
                grads = torch.autograd.grad(value, leaves, allow_unused=True)
            self._write_add(total, grads, size)
            count += size
        return total.div_(count)

    def _write_add(self, out: torch.Tensor, cols: tuple[Optional[torch.Tensor], ...], weight: float) -> None:
        for part, col in zip(self.layout.split(out), cols):
            if col is not None:
                part.add_(col.reshape(part.shape), alpha=weight)

    def release(self) -> None:
        """Drop whatever the operator caches for a single batch (it holds that batch's activations)."""

    def check_deterministic(self, *, seed: int = 0, rtol: Optional[float] = None) -> float:
        """Apply the operator twice to one random vector and return the relative difference (raises if large)."""
        gen = torch.Generator(device=self.device).manual_seed(seed)
        v = torch.randn(self.shape[0], generator=gen, device=self.device, dtype=self.dtype)
        a, b = self.matvec(v), self.matvec(v)
        diff = float((a - b).norm() / a.norm().clamp_min(torch.finfo(self.dtype).tiny))
        limit = rtol if rtol is not None else math.sqrt(torch.finfo(self.dtype).eps)
        if diff > limit:
            raise LossError(
                f"two products with the same vector differ by {diff:.2e} (relative): the model or loss is random "
                "(dropout in train mode, data augmentation, a shuffling loader without a fixed seed?)"
            )
        return diff


class HessianOperator(ModelOperator):
    """``H = ∇²_θ (1/N) Σ_i loss(model(x_i), y_i)`` over the selected parameters θ, as a linear operator.

    ``loss(output, targets)`` (or a :class:`~landscape.operators.functional.ModelLoss` ``fn(model, batch)``)
    must return the *mean* over the batch; batches are weighted by their size, so the
    product is exact for any batching. ``data`` is one ``(X, y)`` pair, a list of pairs or any iterable of batches
    (a DataLoader); it is iterated once per product and never held beyond the current batch.

    Product paths (``product=``):

    - ``"layerwise"``: hand-written forward and backward tangent sweeps (Pearlmutter's R-op) for an
      ``nn.Sequential`` of Linear/Conv2d layers, Tanh/Sigmoid/ReLU/LeakyReLU, MaxPool2d, Flatten and Dropout under
      ``F.cross_entropy``, ``F.mse_loss`` (or their module forms) or ``landscape.losses.squared_loss`` (any loss
      carrying ``layerwise_kind``, see :mod:`landscape.operators.layerwise`). Per batch the activations and derivatives
      are cached once; each product is then a few matrix products into reused buffers, with no autograd.
    - ``"reverse"`` (reverse-over-reverse): one gradient graph per batch, shared by every column of a block;
      for a single ``(X, y)`` batch the graph is built once and reused by every later product.
    - ``"forward"`` (forward-over-reverse): ``torch.func.jvp`` of ``torch.func.grad``, vmapped over the columns.
    - ``"auto"``: ``"layerwise"`` where it applies, else ``"reverse"``: the fastest in our measurements on CPU
      (``scripts/bench_engine.py``).

    ``compile=True`` runs the forward-over-reverse product through ``torch.compile`` (``product`` must be
    ``"auto"`` or ``"forward"``): the first product of each block width pays the compilation (seconds to a minute),
    later ones run the fused kernels. It serves models the layerwise sweeps do not cover (residual networks,
    normalisation layers); ``scripts/bench_engine.py --only compile`` measures it against the other paths.

    ``vectorize`` batches the columns of a block through one vmapped call (``is_grads_batched``) on the reverse
    path; it defaults to True on CUDA and False on CPU, where a column loop over the shared graph was faster.
    The model is never modified: parameters and buffers are copied to ``dtype``/``device`` and the model runs
    in eval mode through ``torch.func.functional_call``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        data: Any,
        *,
        params: ParamFilter = None,
        dtype: Optional[torch.dtype] = None,
        device: Optional[torch.device | str] = None,
        product: str = "auto",
        vectorize: Optional[bool] = None,
        compile: bool = False,
    ) -> None:
        if product not in PRODUCTS:
            raise OptionError(f"product must be one of {PRODUCTS}, got {product!r}")
        if compile and product not in ("auto", "forward"):
            raise OptionError(f'compile=True compiles the forward-over-reverse product; product={product!r} cannot be '
                              'compiled (use product="forward" or "auto")')
        self._product_requested = "forward" if compile else product
        self._compile_requested = compile
        self._compiled: Optional[Callable[..., torch.Tensor]] = None
        self._compiled_once = False
        self._vectorize_requested = vectorize
        self._graph: Optional[GradientGraph] = None
        self._sweeps: Optional[layerwise.LayerwiseHVP] = None
        super().__init__(model, loss, data, params=params, dtype=dtype, device=device)

    def _setup(self) -> None:
        product = self._product_requested
        fits = layerwise.supports(self.model, self.loss)
        if product == "layerwise" and not fits:
            raise OptionError(
                'product="layerwise" needs an nn.Sequential of Linear/Conv2d, Tanh/Sigmoid/ReLU/LeakyReLU, '
                "MaxPool2d, Flatten and Dropout under F.cross_entropy, F.mse_loss or the squared loss; use "
                'product="reverse" here'
            )
        if product == "forward" and is_scripted(self.model):
            raise OptionError('product="forward" needs torch.func, which TorchScript modules refuse; use "reverse"')
        self.product = ("layerwise" if fits else "reverse") if product == "auto" else product
        if self._compile_requested:
            self._compiled = compiled_forward_product()
        vectorize = self._vectorize_requested
        self.vectorize = (self.device.type == "cuda") if vectorize is None else bool(vectorize)

    def _gradient_graph(self, batch: Any) -> GradientGraph:
        """The gradient of one batch's loss with its graph kept, for differentiating it again."""
        leaves = tuple(p.detach().requires_grad_() for p in self.params)
        with torch.enable_grad():
            value = self.batch_loss(leaves, batch)
            self._require_finite(value)
            grads = torch.autograd.grad(value, leaves, create_graph=True, allow_unused=True)
        # Gradients that do not depend on the parameters (absent, or constant) contribute zero curvature.
        live = tuple(i for i, g in enumerate(grads) if g is not None and g.requires_grad)
        return GradientGraph(leaves, tuple(grads[i] for i in live), live)

    # -- products -------------------------------------------------------------------------------------------
    def _product(self, batch: Any, blocks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self.product == "layerwise":
            try:
                return self._layerwise(batch, blocks)
            except layerwise.Unsupported as reason:
                if self._product_requested == "layerwise":
                    raise OptionError(f'product="layerwise" cannot handle this data: {reason}') from None
                self.product = "reverse"  # "auto" falls back to autograd for data the sweeps do not cover
        if self.product == "reverse":
            return self._reverse(batch, blocks)
        return self._forward(batch, blocks)

    def _layerwise(self, batch: Any, blocks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        sweeps = self._sweeps if self._single else None
        if sweeps is None:
            with eval_mode(self.model):  # Dropout off, as on every other path
                sweeps = layerwise.LayerwiseHVP(self.model, self.loss, self._state(self.params), batch)
            if self._single:
                self._sweeps = sweeps
        k = blocks[0].shape[0]
        out = torch.empty(k, self.shape[0], dtype=self.dtype, device=self.device)
        for j in range(k):
            sweeps.product_into(dict(zip(self.names, (b[j] for b in blocks))),
                                dict(zip(self.names, self.layout.split(out[j]))))
        return self._require_finite(out)

    def _reverse(self, batch: Any, blocks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        if self._single:
            if self._graph is None:
                self._graph = self._gradient_graph(batch)
            graph = self._graph
        else:
            graph = self._gradient_graph(batch)
        k = blocks[0].shape[0]
        out = torch.zeros(k, self.shape[0], dtype=self.dtype, device=self.device)
        if not graph.grads:
            return out
        tangents = [blocks[i] for i in graph.live]
        if self.vectorize and k > 1:
            cols = torch.autograd.grad(graph.grads, graph.leaves, tangents, retain_graph=True,
                                       is_grads_batched=True, allow_unused=True)
            self._write(out, cols)
        else:
            for j in range(k):
                cols = torch.autograd.grad(graph.grads, graph.leaves, [t[j] for t in tangents], retain_graph=True,
                                           allow_unused=True)
                self._write(out[j], cols)
        return out

    def _forward(self, batch: Any, blocks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        product = forward_product if self._compiled is None else self._compiled
        try:
            out = product(self, self.params, batch, blocks)
        except Exception as err:  # noqa: BLE001 - compilation failures come in many types; name the option
            if self._compiled is None or self._compiled_once:
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise OptionError(f"torch.compile of the Hessian-vector product failed ({type(err).__name__}: "
                              f"{first}); run without --compile (compile=False)") from err
        self._compiled_once = True
        return self._require_finite(out)  # a NaN loss cannot be tested inside jvp/vmap; its products show it

    def release(self) -> None:
        """Drop the cached gradient graph or sweeps (they hold the activations of the single batch)."""
        self._graph = None
        self._sweeps = None


def forward_product(op: HessianOperator, params: tuple[torch.Tensor, ...], batch: Any,
                    blocks: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The (k, n) forward-over-reverse product ``jvp(grad(loss))`` of one batch, vmapped over the k columns."""
    gradient = grad(lambda *ps: op.batch_loss(ps, batch), argnums=tuple(range(len(params))))

    def hvp(*tangents: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return jvp(gradient, params, tangents)[1]

    if blocks[0].shape[0] == 1:
        return op.layout.flatten(hvp(*(b[0] for b in blocks))).unsqueeze(0)
    return op.layout.flatten(vmap(hvp)(*blocks), batched=True)


_COMPILED: Optional[Callable[..., torch.Tensor]] = None


def compiled_forward_product() -> Callable[..., torch.Tensor]:
    """:func:`forward_product` under ``torch.compile``, made once per process so that every operator shares its
    compiled graphs (a new operator on the same kind of model reuses them instead of compiling again). Shapes are
    static (``dynamic=False``): forward-mode duals do not trace with symbolic shapes, so each new model or batch
    shape compiles once more."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(forward_product, dynamic=False)
    return _COMPILED
