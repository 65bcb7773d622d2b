"""Local simulators of the provider HTTP APIs (`reconciler sandbox`, `--sandbox`, tests).

with Sandbox(tmp_path, training_seconds=0.5) as sandbox:
    os.environ.update(sandbox.env())      # RECONCILER_<TYPE>_BASE_URL and the sandbox keys
    sandbox.inject(Fault(provider="roboflow", path="/train$", status=503, retry_after=1))
    ...
    sandbox.requests("roboflow")          # what the client sent
"""

from reconciler.sandbox.faults import Fault, LoggedRequest
from reconciler.sandbox.registry import (
    KEY_ENV,
    PROVIDER_TYPES,
    SANDBOX_API_KEYS,
    available_simulators,
    base_url_env,
    key_env,
    register_simulator,
    simulator_class,
    unregister_simulator,
)
from reconciler.sandbox.server import Sandbox
from reconciler.sandbox.simulator import Simulator, TrainingState
from reconciler.sandbox.wire import FormPart, SimHTTPError, SimRequest, SimResponse, route

__all__ = [
    "KEY_ENV",
    "PROVIDER_TYPES",
    "SANDBOX_API_KEYS",
    "Fault",
    "FormPart",
    "LoggedRequest",
    "Sandbox",
    "SimHTTPError",
    "SimRequest",
    "SimResponse",
    "Simulator",
    "TrainingState",
    "available_simulators",
    "base_url_env",
    "key_env",
    "register_simulator",
    "route",
    "simulator_class",
    "unregister_simulator",
]
