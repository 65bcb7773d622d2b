"""Lucid simulator: the Recommendation API's data batches and trainings (providers.md §4).
Routes, world and callbacks in `simulator`, request validation in `validation`."""

from reconciler.sandbox.lucid.simulator import LucidSimulator

__all__ = ["LucidSimulator"]
