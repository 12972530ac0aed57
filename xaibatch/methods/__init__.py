"""Explanation methods. Importing this package registers every built-in method."""

from .base import (METHODS, Batch, Explanation, Method, ModelContext, StopRequested, create_method,
                   register_method)
from . import gradcam  # noqa: F401  (registers "gradcam")
from . import guided_gradcam  # noqa: F401  (registers "guided-gradcam")
from . import lime  # noqa: F401  (registers "lime")

__all__ = ["METHODS", "StopRequested", "Batch", "Explanation", "Method", "ModelContext", "create_method", "register_method"]
