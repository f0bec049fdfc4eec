"""Matrix-free curvature operators over a model, a loss and data."""

from landscape.operators.base import DenseOperator, LinearOperator
from landscape.operators.functional import ModelLoss
from landscape.operators.ggn import FisherOperator, GGNOperator
from landscape.operators.hessian import HessianOperator
from landscape.operators.jacobian import jacobian_norms

__all__ = ["LinearOperator", "DenseOperator", "HessianOperator", "GGNOperator", "FisherOperator", "ModelLoss",
           "jacobian_norms"]
