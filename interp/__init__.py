"""The seam between models and the rest of the toolkit: load a model, trace it into one `Trace`.

Only this package imports TransformerLens or transformers; probes and studies see tensors.
"""

from interp.models import HUB_MODELS, MINILM, Model, ModelLoadError, load
from interp.trace import Trace, trace

__all__ = ["HUB_MODELS", "MINILM", "Model", "ModelLoadError", "Trace", "load", "trace"]
