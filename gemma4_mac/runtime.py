"""Heavy imports, once, in a fixed order, before a second thread can race them.

transformers and huggingface_hub load their parts lazily, and mlx_lm imports transformers: two threads
importing them for the first time at once collide, one of them seeing a half-made module ("cannot import
name 'AutoTokenizer' from 'transformers'"), and a native library can then abort the whole process. Every
thread that may be first to need them goes through `import_runtime()` (the model thread as it starts, the
download thread, the server before it starts); one lock makes the first caller do all of it and the others
wait until it is done. Code that runs later may then import these names anywhere: they are complete.
"""

from __future__ import annotations

import importlib
import threading
from typing import Iterable

# What the model thread, the converter and the downloader import, dependencies before their users.
RUNTIME_MODULES = (
    "numpy", "mlx.core", "mlx.nn", "mlx.utils", "safetensors", "jinja2", "jinja2.ext", "jinja2.sandbox",
    "huggingface_hub", "huggingface_hub.errors", "huggingface_hub.file_download", "huggingface_hub.utils",
    "transformers", "transformers.models.auto.tokenization_auto", "transformers.tokenization_utils_fast",
    "transformers.integrations.gguf.gguf_tokenizer_mapping", "mlx_lm", "mlx_lm.sample_utils",
    "mlx_lm.tokenizer_utils", "gguf", "gguf.quants", "PIL.Image", "av", "soundfile", "soxr", "pypdfium2",
    "psutil", "mlx_model", "mlx_model.loader", "mlx_model.processor", "mlx_model.tokenizer",
    "gemma4_mac.generate", "convert", "convert.pipeline", "convert.hf_source", "convert.hub_download",
    "convert.gguf_tokenizer",
)
# What the HTTP server adds (imported on the thread that starts it, after the runtime; its own modules
# import only these and the runtime).
SERVER_MODULES = ("starlette.applications", "starlette.responses", "starlette.routing", "uvicorn", "llguidance",
                  "llguidance.hf")
# Names the lazy packages resolve on first attribute access: resolved here, under the lock, too.
LAZY_ATTRIBUTES = (("transformers", "AutoTokenizer"), ("transformers", "PreTrainedTokenizerFast"),
                   ("huggingface_hub", "HfApi"), ("huggingface_hub", "hf_hub_url"), ("huggingface_hub", "constants"))

_lock = threading.Lock()
_imported: set[str] = set()


def _import_all(modules: Iterable[str]) -> None:
    for name in modules:
        if name not in _imported:
            importlib.import_module(name)
            _imported.add(name)


def import_runtime() -> None:
    """Import everything the model thread, converter and downloader use (once; other callers wait)."""
    if "runtime" in _imported:
        return
    with _lock:
        if "runtime" in _imported:
            return
        _import_all(RUNTIME_MODULES)
        for module, attribute in LAZY_ATTRIBUTES:
            getattr(importlib.import_module(module), attribute)
        _imported.add("runtime")


def import_server() -> None:
    """Import the runtime and the HTTP server's modules (once; other callers wait)."""
    import_runtime()
    if "server" in _imported:
        return
    with _lock:
        _import_all(SERVER_MODULES)
        _imported.add("server")


def runtime_imported() -> bool:
    """Whether `import_runtime()` has finished (in any thread)."""
    return "runtime" in _imported
