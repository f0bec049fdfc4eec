"""Input-output Jacobian norms per sample (:mod:`.norms`) and the Lipschitz bounds they sit between: the largest
spectral norm over the data from below, the product of the layers' norms from above (:mod:`.lipschitz`)."""

from landscape.jacobian.lipschitz import layer_spectral_norm, lipschitz_upper_bound
from landscape.jacobian.norms import jacobian_norms, per_sample_jacobian_norms

__all__ = ["jacobian_norms", "per_sample_jacobian_norms", "lipschitz_upper_bound", "layer_spectral_norm"]
