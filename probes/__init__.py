"""Pure tensor functions, one module per mathematical family; no model library imported here.

Every probe takes tensors and returns tensors, batched over leading axes (one call covers every
layer and head of a `Trace`), in float32 or float64, on the input's device. Degenerate input
raises ValueError. Derived objects are explicit arguments:
`fiedler_value(attention_graph(pattern))`, `mass_near_one(gram(to_sphere(resid)))`.
"""

from probes.attention import attention_entropy, vdi, vdi_null
from probes.clustering import Clusters, Plateaus, hdbscan_clusters, mean_plateau_width, plateaus
from probes.dynamics import toy_attention_dynamics
from probes.energy import (
    energy_violations,
    interaction_energy,
    log_energy_violation_mask,
    log_energy_violations,
    log_interaction_energy,
)
from probes.geometry import (
    EFFECTIVE_RANK_VARIANTS,
    effective_rank,
    gram,
    inner_product_histogram,
    mass_near_one,
    nn_stability,
    to_sphere,
)
from probes.graph import attention_graph, fiedler_value, uniform_causal_fiedler
from probes.similarity import cka_matrix, linear_cka
from probes.spectral import layer_ov_spectral_radius, ov_spectral_radius, spectral_radius

__all__ = [
    "EFFECTIVE_RANK_VARIANTS", "Clusters", "Plateaus", "attention_entropy", "attention_graph",
    "cka_matrix", "effective_rank", "energy_violations", "fiedler_value", "gram",
    "hdbscan_clusters", "inner_product_histogram", "interaction_energy", "layer_ov_spectral_radius",
    "linear_cka", "log_energy_violation_mask", "log_energy_violations", "log_interaction_energy",
    "mass_near_one", "mean_plateau_width", "nn_stability", "ov_spectral_radius", "plateaus",
    "spectral_radius", "to_sphere", "toy_attention_dynamics", "uniform_causal_fiedler", "vdi",
    "vdi_null",
]
