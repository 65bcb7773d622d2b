"""Rebase Energy: the `model` and `training` fields of its manifests and its type record."""
