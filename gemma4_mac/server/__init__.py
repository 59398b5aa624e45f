"""A local OpenAI-compatible HTTP server that shares the app's model.

`main(argv)` is `python -m gemma4_mac serve`. In the app, the window's engine and the server share one
`ModelWorker` (the thread that owns the model); build a `GenerationService` over it and serve
`create_app(service, options)` with a `ServerHandle` (gemma4_mac.server_control does this).

Names are imported on first use: the window's engine imports `server.worker` at start-up and should
not pay for the web framework and MLX until a server is actually started.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "main": "app", "create_app": "app", "ServerHandle": "app", "ServeError": "app", "check_binding": "app",
    "is_loopback": "app", "load_slot": "app", "ServerOptions": "routes", "GenerationService": "service",
    "GenerationJob": "service", "ModelWorker": "worker", "ModelSlot": "worker", "WorkerJob": "worker",
    "QueueFullError": "worker",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
