"""Rebase Energy simulator: the site and training part of https://api.rebase.energy (providers.md §2).
Routes, world and views in `simulator`, request validation in `validation`."""

from reconciler.sandbox.rebase.simulator import RebaseSimulator

__all__ = ["RebaseSimulator"]
