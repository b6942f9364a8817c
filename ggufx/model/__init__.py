"""An opened model: the headers of one GGUF file or of every shard of a split model, as one object."""

from ggufx.model.model import GGUFModel, Metadata, Shard
from ggufx.model.open import open_model, open_remote

__all__ = ["GGUFModel", "Metadata", "Shard", "open_model", "open_remote"]
