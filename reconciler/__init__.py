"""reconciler: keep hosted model trainings in the state that YAML manifests declare."""

__version__ = "0.1.0"
