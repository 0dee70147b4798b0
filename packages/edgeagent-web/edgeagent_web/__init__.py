"""onnxruntime-web's WebAssembly build for edgeagent's browser-tab device (``/device.html`` of
``edgeagent dashboard``), in a distribution of its own so edgeagent's wheel, which every device
release carries, stays small (the ``.wasm`` alone is 14.8 MB). Files copied unchanged from the
npm package (MIT; see ``onnxruntime-web/LICENSE`` and edgeagent's ``bridges/web/vendor/README.md``).
"""

from importlib.resources import files
from importlib.resources.abc import Traversable

#: The onnxruntime-web version these files are.
ONNXRUNTIME_WEB_VERSION = "1.31.1"


def assets() -> Traversable:
    """The folder holding ort.wasm.min.js, ort-wasm-simd-threaded.mjs and its .wasm."""
    return files(__name__) / "onnxruntime-web"
