"""Matrix-free curvature operators over a model, a loss and data."""

from landscape.operators.base import DenseOperator, LinearOperator
from landscape.operators.functional import ModelLoss
from landscape.operators.hessian import HessianOperator

__all__ = ["LinearOperator", "DenseOperator", "HessianOperator", "ModelLoss"]
