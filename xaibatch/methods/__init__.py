"""Explanation methods. Importing this package registers every built-in method."""

from .base import (
    FAMILIES,
    METHODS,
    Batch,
    Explanation,
    Method,
    ModelContext,
    StopRequested,
    create_method,
    list_methods,
    method_class,
    register_family,
    register_method,
)
from . import gradcam  # noqa: F401  (registers "gradcam")
from . import guided_gradcam  # noqa: F401  (registers "guided-gradcam")
from . import lime  # noqa: F401  (registers "lime")
from . import cam_library  # noqa: F401  (registers "cam:*"; pytorch-grad-cam is imported only when one is used)
from . import captum_library  # noqa: F401  (registers "captum:*"; captum is imported only when one is used)

__all__ = [
    "FAMILIES",
    "METHODS",
    "Batch",
    "Explanation",
    "Method",
    "ModelContext",
    "StopRequested",
    "create_method",
    "list_methods",
    "method_class",
    "register_family",
    "register_method",
]
