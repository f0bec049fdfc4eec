"""Matrix-free curvature operators over a model, a loss and data."""

from landscape.linalg.operator import DenseOperator, LinearOperator
from landscape.operators.functional import ModelLoss
from landscape.operators.ggn import FisherOperator, GGNOperator
from landscape.operators.hessian import HessianOperator

__all__ = ["LinearOperator", "DenseOperator", "HessianOperator", "GGNOperator", "FisherOperator", "ModelLoss"]
