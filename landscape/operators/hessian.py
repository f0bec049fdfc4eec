"""The Hessian of the mean loss over a data set, applied matrix-free to flat parameter-space vectors.

:class:`HessianOperator` builds on :class:`~landscape.operators.model.ModelOperator`, which holds what every
curvature operator of a model, a loss and data shares (parameter selection, copies on the operator's dtype and device,
batch streaming with exact size weighting, clear failures on NaN).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import nn
from torch.func import grad, jvp, vmap

from landscape.errors import OptionError, option
from landscape.operators import layerwise
from landscape.operators.attention import differentiable_attention
from landscape.operators.functional import eval_mode, is_scripted
from landscape.operators.kernels import SecondOrderKernels
from landscape.operators.model import LossFn, ModelOperator
from landscape.operators.mse import elementwise_mse
from landscape.operators.params import ParamFilter

PRODUCTS = ("auto", "layerwise", "reverse", "forward")


class GradientGraph(NamedTuple):
    """A batch's gradient with its autograd graph: ``grads[j]`` is the gradient of ``leaves[live[j]]``."""

    leaves: tuple[torch.Tensor, ...]
    grads: tuple[torch.Tensor, ...]
    live: tuple[int, ...]


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
      for a single ``(X, y)`` batch the graph is built once and reused by every later product. Convolutions,
      linear layers, eval-mode batch norm, ReLU, GELU and cross-entropy enter it as nodes with direct second
      derivatives (:mod:`landscape.operators.kernels`): on CPU, products 1.4× faster on ResNet-18 and 1.15× on
      the GPT-style model than autograd's generic double backward.
    - ``"forward"`` (forward-over-reverse): ``torch.func.jvp`` of ``torch.func.grad``, vmapped over the columns.
    - ``"auto"``: ``"layerwise"`` where it applies, else ``"reverse"``: the fastest in our measurements on CPU
      (``scripts/bench_engine.py``, ``scripts/bench_models.py``; forward-over-reverse costs 3.8 gradients on
      ResNet-18).

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
        with torch.enable_grad(), SecondOrderKernels():
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
        # Under torch.compile the evaluation's own choices of attention kernel and MSE form are no-ops (tracing sees
        # no global state change), so they are made here, outside the compiled product.
        mse = elementwise_mse() if self._compiled is not None else contextlib.nullcontext()
        try:
            with differentiable_attention(), mse:
                out = product(self, self.params, batch, blocks)
        except Exception as err:  # noqa: BLE001 - compilation failures come in many types; name the option
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if self._compiled is None and isinstance(err, NotImplementedError) and "forward AD" in first:
                raise OptionError(f'product="forward" needs a forward-mode derivative of every operation of the '
                                  f'model and loss, and torch has none for one of them ({first}); use '
                                  'product="reverse"') from err
            if self._compiled is None or self._compiled_once:
                raise
            raise OptionError(f"torch.compile of the Hessian-vector product failed ({type(err).__name__}: "
                              f"{first}); run without {option('compile')}") from err
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
