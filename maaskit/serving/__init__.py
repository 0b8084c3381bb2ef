"""Taking a model out of the notebook: artifacts on disk (and, next, serving them)."""

from .artifact import ArtifactError, load_artifact, save_artifact

__all__ = ["ArtifactError", "load_artifact", "save_artifact"]
