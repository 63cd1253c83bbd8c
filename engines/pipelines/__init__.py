"""Pipelines of our own, for the embedded models that diffusers has no pipeline class for."""

from .shapes import ShapesPipeline

__all__ = ["ShapesPipeline"]
