"""Explanation methods. Importing this package registers every built-in method."""

from .base import METHODS, Batch, Explanation, Method, ModelContext, create_method, register_method
from . import gradcam  # noqa: F401  (registers "gradcam")

__all__ = ["METHODS", "Batch", "Explanation", "Method", "ModelContext", "create_method", "register_method"]
