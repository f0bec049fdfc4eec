"""The generalized Gauss-Newton matrix and the Fisher information of a model, applied matrix-free.

Both have the form ``(1/N) Σ_b |b| · J_bᵀ M_b J_b``: ``J_b`` is the Jacobian of the model's outputs on batch ``b``
with respect to the selected parameters, ``M_b`` a symmetric matrix on the output space of the batch (block
diagonal over its samples for the Fisher). A product ``G v`` is one Jacobian-vector product (outputs' tangent),
``M_b`` applied in output space (cheap), and one vector-Jacobian product back to the parameters; ``J_b`` is never
formed. What ``M_b`` is:

- :class:`GGNOperator`: the Hessian of the batch-mean loss with respect to the outputs (``loss(outputs, targets)``);
  closed forms for ``F.cross_entropy`` (``(diag(p) − ppᵀ)/B`` per sample, ``p = softmax(logits)``), the next-token
  loss (the same per predicting position, over the B·(T−1) predictions), ``F.mse_loss`` (``2/(B·C)·I``, C outputs
  per sample) and the squared loss (``I/B``), autograd's double backward for any other loss. The GGN is positive
  semi-definite whenever the loss is convex in the outputs.
- :class:`FisherOperator`: the Fisher information of the predictive distribution the loss is the negative
  log-likelihood of (categorical for cross-entropy, Gaussian for MSE and the squared loss), exactly
  (``kind="exact"``, which equals the GGN), by sampled labels (``kind="true"``) or at the data labels
  (``kind="empirical"``, the "empirical Fisher").

Product paths (``product=``): ``"reverse"`` (the default, ``"auto"``) builds per batch the outputs' autograd graph
and the graph of ``u ↦ J_bᵀ u`` (the double-backward trick: ``J_b v`` is the gradient of ``(J_bᵀ u)·v`` in ``u``),
shared by every column of a block and, for a single ``(X, y)`` batch, by every later product; it needs only
reverse-mode autograd, so TorchScript models work. ``"forward"`` uses ``torch.func.jvp`` vmapped over the columns
and a ``torch.func.vjp`` closure per batch. ``vectorize`` batches the columns of a block through one vmapped
backward call on the reverse path (``is_grads_batched``); it defaults to True on CUDA and to a column loop on CPU.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import nn
from torch.func import jvp, vjp, vmap

from landscape.errors import DataError, OptionError
from landscape.operators import layerwise
from landscape.operators.functional import ModelLoss, call_with, is_scripted
from landscape.operators.model import LossFn, ModelOperator
from landscape.operators.next_token import next_token
from landscape.operators.params import ParamFilter

PRODUCTS = ("auto", "reverse", "forward")
FISHER_KINDS = ("true", "empirical", "exact")


# -- symmetric matrices on the output space of one batch ---------------------------------------------------------
# Each ``apply`` takes a block U of k output-space tangents, shape (k, *outputs.shape), and returns M U, same shape.

class OutputMatrix:
    """A symmetric matrix on the output space of one batch."""

    def apply(self, U: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


class _Scaled(OutputMatrix):
    """``c · I``: the output Hessian of the squared loss (c = 1/B) and of MSE (c = 2/(B·C))."""

    def __init__(self, c: float) -> None:
        self.c = c

    def apply(self, U: torch.Tensor) -> torch.Tensor:
        return U * self.c


class _Softmax(OutputMatrix):
    """``scale · (diag(p_i) − p_i p_iᵀ)`` per sample i, ``p_i = softmax(logits_i)``: cross-entropy's output Hessian."""

    def __init__(self, logits: torch.Tensor, scale: float) -> None:
        self.p = torch.softmax(logits, dim=-1)
        self.scale = scale

    def apply(self, U: torch.Tensor) -> torch.Tensor:
        pu = self.p * U
        return (pu - self.p * pu.sum(-1, keepdim=True)).mul_(self.scale)


class _NextTokenSoftmax(_Softmax):
    """The next-token loss's output Hessian for logits (B, T, V): the softmax Hessian of each position t < T−1
    over the B·(T−1) predictions; zero at the last position, which predicts nothing."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__(logits, 1.0 / (logits.shape[0] * (logits.shape[1] - 1)))
        self.p[:, -1] = 0


class _LossHessian(OutputMatrix):
    """The Hessian of ``loss(outputs, targets)`` in the outputs, by autograd's double backward (any loss)."""

    def __init__(self, loss: LossFn, outputs: torch.Tensor, targets: Any, vectorize: bool) -> None:
        self.a = outputs.detach().requires_grad_()
        self.vectorize = vectorize
        with torch.enable_grad():
            (self.g,) = torch.autograd.grad(loss(self.a, targets), self.a, create_graph=True, allow_unused=True)

    def apply(self, U: torch.Tensor) -> torch.Tensor:
        if self.g is None or not self.g.requires_grad:  # the loss is linear (or constant) in the outputs
            return torch.zeros_like(U)
        if self.vectorize and U.shape[0] > 1:
            (out,) = torch.autograd.grad(self.g, self.a, U, retain_graph=True, is_grads_batched=True,
                                         allow_unused=True)
            return torch.zeros_like(U) if out is None else out
        cols = [torch.autograd.grad(self.g, self.a, u, retain_graph=True, allow_unused=True)[0] for u in U]
        return torch.stack([torch.zeros_like(u) if c is None else c for c, u in zip(cols, U)])


class _Outer(OutputMatrix):
    """``scale · Σ_s r_is r_isᵀ`` per sample i, for output-space gradients ``R`` of shape (S, B, *sample_shape).

    Kept as the S factors when S ≤ C (the outputs per sample), else summed once into B dense C×C blocks. A sample
    is a batch's row, or one position of it (the next-token Fisher: R of shape (S, B·T, V) for logits (B, T, V)).
    """

    def __init__(self, R: torch.Tensor, scale: float) -> None:
        S, B = R.shape[0], R.shape[1]
        R = R.reshape(S, B, -1)
        self.scale = scale
        self.dense = S > R.shape[2]
        self.R = R
        if self.dense:
            self.M = torch.einsum("sbc,sbd->bcd", R, R).mul_(scale)

    def apply(self, U: torch.Tensor) -> torch.Tensor:
        k, B = U.shape[0], self.R.shape[1]  # B samples: sequences, or tokens (next-token Fisher)
        flat = U.reshape(k, B, -1)
        if self.dense:
            out = torch.einsum("bcd,kbd->kbc", self.M, flat)
        else:
            coef = torch.einsum("sbc,kbc->ksb", self.R, flat)
            out = torch.einsum("ksb,sbc->kbc", coef, self.R).mul_(self.scale)
        return out.reshape(U.shape)


# -- the per-batch linearisation ------------------------------------------------------------------------------

class _Linearization:
    """What one batch's products share: the output-space matrix and either the reverse-mode graphs of the outputs
    and of ``u ↦ Jᵀu`` (``leaves, outputs, u, jt, live``) or the ``torch.func`` closures (``fn, vjp_fn``)."""

    def __init__(self, matrix: OutputMatrix, **parts: Any) -> None:
        self.matrix = matrix
        self.__dict__.update(parts)


class GGNOperator(ModelOperator):
    """``G = (1/N) Σ_b |b| · J_bᵀ H_b J_b`` over the selected parameters θ, as a linear operator.

    ``J_b`` is the Jacobian of ``model(X_b)`` with respect to θ and ``H_b = ∇²_outputs loss(outputs, y_b)`` the
    Hessian of the batch-mean loss in the outputs (closed forms for ``F.cross_entropy``, ``F.mse_loss`` and
    ``landscape.losses.squared_loss`` and their module forms, autograd for any other ``loss(outputs, targets)``).
    It is the Hessian without the terms of the model's own curvature, and positive semi-definite when the loss is
    convex in the outputs; for a model linear in θ it equals the Hessian.

    ``loss`` must be an output loss returning the batch mean (a ``ModelLoss`` has no outputs to linearise:
    OptionError). ``params``, ``dtype``, ``device`` and ``data`` behave as for
    :class:`~landscape.operators.hessian.HessianOperator`: the selected parameters and every other parameter and
    buffer are copied to ``dtype``/``device``, the model runs in eval mode and is never modified, a single
    ``(X, y)`` pair is cached (with its linearisation: :meth:`release` drops it) and any other data is streamed
    with exact batch-size weighting; a NaN or inf in the outputs, loss or products raises LossError. See the module
    docstring for ``product`` and ``vectorize``.
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
    ) -> None:
        if isinstance(loss, ModelLoss):
            raise OptionError(
                f"{type(self).__name__} needs an output loss loss(outputs, targets) such as F.cross_entropy or "
                f"F.mse_loss, got the model loss {loss!r}: the Gauss-Newton matrix linearises the model's outputs, "
                "which a loss computed from the model itself does not expose; use HessianOperator for it"
            )
        if not callable(loss):
            raise OptionError(f"loss must be callable as loss(outputs, targets), got {type(loss).__name__}")
        if product not in PRODUCTS:
            raise OptionError(f"product must be one of {PRODUCTS}, got {product!r}")
        self._product_requested = product
        self._vectorize_requested = vectorize
        self._cache: Optional[_Linearization] = None
        super().__init__(model, loss, data, params=params, dtype=dtype, device=device)

    def _setup(self) -> None:
        if self._product_requested == "forward" and is_scripted(self.model):
            raise OptionError('product="forward" needs torch.func, which TorchScript modules refuse; use "reverse"')
        self.product = "reverse" if self._product_requested == "auto" else self._product_requested
        vectorize = self._vectorize_requested
        self.vectorize = (self.device.type == "cuda") if vectorize is None else bool(vectorize)

    # -- the model's outputs and the output-space matrix -----------------------------------------------------
    def batch_outputs(self, params: tuple[torch.Tensor, ...], batch: Any) -> torch.Tensor:
        """``model(inputs)`` of one (already moved) batch with the selected parameters replaced by ``params``."""
        outputs = call_with(self.model, self._state(params), batch[0])
        if not isinstance(outputs, torch.Tensor):
            raise OptionError(f"{type(self).__name__} needs a model that returns one tensor of outputs, got "
                              f"{type(outputs).__name__}")
        return outputs

    def _output_matrix(self, outputs: torch.Tensor, targets: Any) -> OutputMatrix:
        """The Hessian of the batch-mean loss in the outputs: a closed form where one is known to hold."""
        if self.loss is next_token and _token_targets(outputs, targets):
            return _NextTokenSoftmax(outputs)
        kind = layerwise.loss_kind(self.loss)
        batch = outputs.shape[0] if outputs.ndim else 1
        if kind == "cross_entropy" and _class_indices(outputs, targets):
            return _Softmax(outputs, 1.0 / batch)
        if kind == "squared" and _squared_fits(outputs, targets):
            return _Scaled(1.0 / batch)
        if kind == "mse" and _same_shape_float(outputs, targets):
            return _Scaled(2.0 / outputs.numel())
        return _LossHessian(self.loss, outputs, targets, self.vectorize)

    def _check_loss(self, outputs: torch.Tensor, targets: Any) -> None:
        """The batch's loss must be a finite scalar, as for the Hessian (its value is not otherwise needed)."""
        with torch.no_grad():
            self._require_finite(self._check_scalar(self.loss(outputs, targets)))

    # -- products ---------------------------------------------------------------------------------------------
    def _linearize(self, batch: Any) -> _Linearization:
        if self.product == "forward":
            def fn(*ps: torch.Tensor) -> torch.Tensor:
                return self.batch_outputs(ps, batch)

            outputs, vjp_fn = vjp(fn, *self.params)
            outputs = self._require_finite(outputs.detach())
            self._check_loss(outputs, batch[1])
            return _Linearization(self._output_matrix(outputs, batch[1]), fn=fn, vjp_fn=vjp_fn)
        leaves = tuple(p.detach().requires_grad_() for p in self.params)
        with torch.enable_grad():
            outputs = self.batch_outputs(leaves, batch)
            self._require_finite(outputs.detach())
            self._check_loss(outputs.detach(), batch[1])
            u = jt = None
            live: tuple[int, ...] = ()
            if outputs.requires_grad:
                u = torch.zeros_like(outputs, requires_grad=True)
                grads = torch.autograd.grad(outputs, leaves, u, create_graph=True, allow_unused=True)
                # parameters the outputs do not depend on have zero Jacobian
                live = tuple(i for i, g in enumerate(grads) if g is not None and g.requires_grad)
                jt = tuple(grads[i] for i in live)
        return _Linearization(self._output_matrix(outputs.detach(), batch[1]), leaves=leaves, outputs=outputs,
                              u=u, jt=jt, live=live)

    def _product(self, batch: Any, blocks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        lin = self._cache if self._single else None
        if lin is None:
            lin = self._linearize(batch)
            if self._single:
                self._cache = lin
        if self.product == "forward":
            return self._forward(lin, blocks)
        return self._reverse(lin, blocks)

    def _reverse(self, lin: _Linearization, blocks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        k = blocks[0].shape[0]
        out = torch.zeros(k, self.shape[0], dtype=self.dtype, device=self.device)
        if not lin.live:
            return out
        tangents = [blocks[i] for i in lin.live]
        batched = self.vectorize and k > 1
        # J v: the gradient in u of (Jᵀu)·v, through the graph of u ↦ Jᵀu
        if batched:
            (JV,) = torch.autograd.grad(lin.jt, lin.u, tangents, retain_graph=True, is_grads_batched=True)
        else:
            JV = torch.stack([torch.autograd.grad(lin.jt, lin.u, [t[j] for t in tangents], retain_graph=True)[0]
                              for j in range(k)])
        W = lin.matrix.apply(JV)
        if batched:
            cols = torch.autograd.grad(lin.outputs, lin.leaves, W, retain_graph=True, is_grads_batched=True,
                                       allow_unused=True)
            self._write(out, cols)
        else:
            for j in range(k):
                cols = torch.autograd.grad(lin.outputs, lin.leaves, W[j], retain_graph=True, allow_unused=True)
                self._write(out[j], cols)
        return self._require_finite(out)

    def _forward(self, lin: _Linearization, blocks: tuple[torch.Tensor, ...]) -> torch.Tensor:
        def push(*tangents: torch.Tensor) -> torch.Tensor:
            return jvp(lin.fn, self.params, tangents)[1]

        if blocks[0].shape[0] == 1:
            W = lin.matrix.apply(push(*(b[0] for b in blocks)).unsqueeze(0))
            cols = tuple(c.unsqueeze(0) for c in lin.vjp_fn(W[0]))
        else:
            W = lin.matrix.apply(vmap(push)(*blocks))
            cols = vmap(lin.vjp_fn)(W)
        return self._require_finite(self.layout.flatten(cols, batched=True))

    def release(self) -> None:
        """Drop the cached linearisation of the single batch (it holds that batch's activations and graphs)."""
        self._cache = None


class FisherOperator(GGNOperator):
    """The Fisher information ``F = (1/N) Σ_i E_{ŷ ~ p(·|x_i)} [g_i(ŷ) g_i(ŷ)ᵀ]`` of the model's predictive
    distribution, ``g_i(ŷ) = ∇_θ ℓ(f(x_i), ŷ)`` the gradient of sample i's loss at the label ŷ, as a linear operator.

    The loss is read as a negative log-likelihood: ``F.cross_entropy`` (or ``nn.CrossEntropyLoss`` without weights
    or smoothing) as a categorical distribution over ``softmax(logits)``, ``landscape.losses.squared_loss``
    (``½‖f − y‖²`` per sample) as a Gaussian ``N(f, I)``, and ``F.mse_loss`` (``‖f − y‖²/C`` per sample for C
    outputs, the mean over them) as the Gaussian ``N(f, (C/2)·I)`` whose negative log-likelihood it is up to a
    constant. Its per-sample Fisher in the outputs is then ``(2/C)·I``, the Hessian of the per-sample loss, just as
    ``I`` is for the squared loss and ``diag(p) − ppᵀ`` for cross-entropy. The next-token loss is read as a
    categorical distribution at each predicted position, each of a batch's B·(T−1) predicted tokens a sample.

    ``kind``:

    - ``"exact"``: the expectation over ŷ in closed form: ``(1/N) Σ_i J_iᵀ F_i J_i`` with the per-sample output
      Fisher ``F_i`` above. For these likelihoods (natural-parameter outputs) this *is* the GGN of
      :class:`GGNOperator`, computed the same way.
    - ``"true"``: ``(1/(N·S)) Σ_i Σ_s g_is g_isᵀ`` with ``S = num_samples`` labels ``ŷ_is`` drawn per sample from
      the model's predictive distribution (a Monte-Carlo estimate of ``"exact"``, positive semi-definite, of rank at
      most N·S). The draws come from a ``torch.Generator`` seeded with ``seed`` afresh at every product and used
      batch by batch in data order, so every product uses the same labels: the operator is one fixed symmetric
      matrix (given data that yields the same batches in the same order, e.g. not a reshuffling DataLoader).
      For a single ``(X, y)`` pair the draws are made once, at the first product, and cached.
    - ``"empirical"``: ``(1/N) Σ_i g_i g_iᵀ`` at the data labels, ``g_i`` the gradient of sample i's own loss
      (the unreduced cross-entropy of sample i under mean-reduced ``F.cross_entropy``; ``‖f_i − y_i‖²/C`` under
      ``F.mse_loss``). Any output loss that is the mean over the batch of per-sample losses works here.

    Matrix-free throughout: ``g_is = J_iᵀ r_is`` with ``r_is`` the gradient of the per-sample loss in the outputs
    (``p_i − e_ŷ`` for cross-entropy, ``f_i − ŷ`` for the squared loss), so ``F v = (1/(N·S)) Σ J_iᵀ r_is
    (r_isᵀ J_i v)``: one Jacobian-vector product and one vector-Jacobian product per batch, no per-sample gradient
    is ever stored. For ``"empirical"`` ``r_i`` is read off as B × the gradient of the batch-mean loss in sample
    i's outputs. Everything else (``params``, ``dtype``, ``device``, data streaming, NaN checks, ``product``,
    ``vectorize``) is as for :class:`GGNOperator`.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: LossFn,
        data: Any,
        *,
        kind: str = "true",
        num_samples: int = 1,
        params: ParamFilter = None,
        dtype: Optional[torch.dtype] = None,
        device: Optional[torch.device | str] = None,
        seed: int = 0,
        product: str = "auto",
        vectorize: Optional[bool] = None,
    ) -> None:
        if kind not in FISHER_KINDS:
            raise OptionError(f"kind must be one of {FISHER_KINDS}, got {kind!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise OptionError(f"num_samples must be a positive integer, got {num_samples!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise OptionError(f"seed must be an integer, got {seed!r}")
        self.kind = kind
        self.num_samples = num_samples
        self.seed = seed
        self.likelihood = None if isinstance(loss, ModelLoss) else \
            "next_token" if loss is next_token else layerwise.loss_kind(loss)
        if kind != "empirical" and not isinstance(loss, ModelLoss) and self.likelihood is None:
            raise OptionError(
                f'FisherOperator(kind="{kind}") needs a loss that is a negative log-likelihood it knows: '
                "F.cross_entropy or the next-token loss (categorical), F.mse_loss or landscape.losses.squared_loss "
                f'(Gaussian), or their nn module forms; got {getattr(loss, "__name__", type(loss).__name__)}. '
                'Use kind="empirical" or GGNOperator for other losses'
            )
        self._draws: Optional[torch.Generator] = None
        super().__init__(model, loss, data, params=params, dtype=dtype, device=device, product=product,
                         vectorize=vectorize)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        self._draws = None  # the same draws, batch by batch, at every product
        return super()._matmat(V)

    def _output_matrix(self, outputs: torch.Tensor, targets: Any) -> OutputMatrix:
        if outputs.ndim == 0:
            raise DataError("the Fisher needs model outputs with a batch dimension first, got a scalar")
        if self.likelihood == "next_token":
            return self._next_token_fisher(outputs, targets)
        batch = outputs.shape[0]
        if self.kind == "empirical":
            return _Outer(self._per_sample_gradients(outputs, targets).unsqueeze(0), 1.0 / batch)
        if self.likelihood == "cross_entropy" and outputs.ndim != 2:
            raise DataError("the cross-entropy Fisher needs model outputs of shape (batch, classes); got "
                            f"{tuple(outputs.shape)}")
        if self.kind == "exact":
            if self.likelihood == "cross_entropy":
                return _Softmax(outputs, 1.0 / batch)
            return _Scaled(1.0 / batch if self.likelihood == "squared" else 2.0 / outputs.numel())
        S = self.num_samples
        if self.likelihood == "cross_entropy":
            p = torch.softmax(outputs, dim=-1)
            labels = torch.multinomial(p, S, replacement=True, generator=self._generator())  # (B, S)
            R = p.unsqueeze(0) - nn.functional.one_hot(labels.T, p.shape[1]).to(p.dtype)
        else:
            noise = torch.randn((S, *outputs.shape), generator=self._generator(), dtype=self.dtype,
                                device=self.device)
            # ŷ = f + σε; the per-sample loss's output gradient is (f − ŷ)/σ² = −ε/σ: σ² = 1 (squared), C/2 (MSE)
            per_sample = outputs[0].numel()
            R = noise if self.likelihood == "squared" else noise.mul_(math.sqrt(2.0 / per_sample))
        return _Outer(R, 1.0 / (batch * S))

    def _generator(self) -> torch.Generator:
        """The label draws' generator, seeded afresh at every product (see :meth:`_matmat`)."""
        if self._draws is None:
            self._draws = torch.Generator(device=self.device).manual_seed(self.seed)
        return self._draws

    def _next_token_fisher(self, logits: torch.Tensor, tokens: Any) -> OutputMatrix:
        """The next-token loss's Fisher, each of the B·(T−1) predicted tokens a sample of the categorical
        ``softmax(logits[i, t])``: ``"exact"`` is the GGN's output Hessian; ``"true"`` draws S tokens per position;
        ``"empirical"`` takes the data's next tokens (per-token gradients, not per-sequence ones)."""
        if not _token_targets(logits, tokens):
            raise DataError("the next-token Fisher needs logits of shape (batch, positions, vocabulary), T >= 2, and "
                            f"integer tokens (batch, positions) within the vocabulary; got logits of shape "
                            f"{tuple(logits.shape)}")
        B, T, V = logits.shape
        predictions = B * (T - 1)
        if self.kind == "exact":
            return _NextTokenSoftmax(logits)
        if self.kind == "empirical":  # B(T−1) × the batch-mean loss's gradient: each token's own loss gradient
            R = self._per_sample_gradients(logits, tokens) * (T - 1)
            return _Outer(R.reshape(1, B * T, V), 1.0 / predictions)
        S = self.num_samples
        p = torch.softmax(logits, dim=-1).reshape(B * T, V)
        labels = torch.multinomial(p, S, replacement=True, generator=self._generator())  # (B·T, S)
        R = p.unsqueeze(0) - nn.functional.one_hot(labels.T, V).to(p.dtype)
        R.view(S, B, T, V)[:, :, -1] = 0  # the last position predicts nothing
        return _Outer(R, 1.0 / (predictions * S))

    def _per_sample_gradients(self, outputs: torch.Tensor, targets: Any) -> torch.Tensor:
        """``r_i``: the gradient of sample i's loss in its outputs, B × that of the batch-mean loss."""
        a = outputs.detach().requires_grad_()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.loss(a, targets), a, allow_unused=True)
        return torch.zeros_like(a) if g is None else g * outputs.shape[0]


# -- when the closed-form output Hessians hold ----------------------------------------------------------------------

def _class_indices(outputs: torch.Tensor, targets: Any) -> bool:
    """(batch, classes) logits and one in-range class index per sample (no ignored labels)."""
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.is_complex():
        return False
    if outputs.ndim != 2 or targets.ndim != 1 or targets.shape[0] != outputs.shape[0]:
        return False
    return bool(((targets >= 0) & (targets < outputs.shape[1])).all())


def _token_targets(outputs: torch.Tensor, targets: Any) -> bool:
    """(batch, positions, vocabulary) logits, T >= 2, and one in-range integer token per position."""
    if not isinstance(targets, torch.Tensor) or targets.is_floating_point() or targets.is_complex():
        return False
    if outputs.ndim != 3 or targets.shape != outputs.shape[:2] or outputs.shape[1] < 2:
        return False
    return bool(((targets >= 0) & (targets < outputs.shape[2])).all())


def _same_shape_float(outputs: torch.Tensor, targets: Any) -> bool:
    """Float targets that broadcast to the outputs without enlarging them."""
    if not isinstance(targets, torch.Tensor) or not targets.is_floating_point():
        return False
    try:
        return torch.broadcast_shapes(outputs.shape, targets.shape) == outputs.shape
    except RuntimeError:
        return False


def _squared_fits(outputs: torch.Tensor, targets: Any) -> bool:
    """The squared loss's targets: one-hot class indices for (batch, classes) outputs, or float targets."""
    if _same_shape_float(outputs, targets):
        return True
    return isinstance(targets, torch.Tensor) and not targets.is_floating_point() and outputs.ndim == 2 \
        and targets.ndim == 1 and targets.shape[0] == outputs.shape[0]

