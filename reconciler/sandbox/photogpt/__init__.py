"""PhotoGPT simulator: the training-related part of https://developer.photogptai.com/api
(providers.md §5). Routes, world and views in `simulator`, request validation in `validation`."""

from reconciler.sandbox.photogpt.simulator import PhotoGPTSimulator

__all__ = ["PhotoGPTSimulator"]
