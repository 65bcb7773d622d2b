"""Roboflow simulator: the training-related part of https://api.roboflow.com (providers.md §3).
Routes in `simulator`, world and views in `state`, request validation in `validation`."""

from reconciler.sandbox.roboflow.simulator import RoboflowSimulator

__all__ = ["RoboflowSimulator"]
