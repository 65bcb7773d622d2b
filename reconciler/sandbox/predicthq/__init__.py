"""PredictHQ simulator: the Forecasts API and Saved Locations of https://api.predicthq.com
(providers.md section 1). Routes in `simulator`, world and derived state in `state`, request
validation in `validation`."""

from reconciler.sandbox.predicthq.simulator import PredictHQSimulator

__all__ = ["PredictHQSimulator"]
