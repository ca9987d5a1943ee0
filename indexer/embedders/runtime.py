"""What runs an encoder: torch, or ONNX Runtime on an export of the torch model cached in the models dir.

An export is made from the loaded torch module on first use (torch.export -> ONNX, dynamic batch and sequence
length), checked against torch on fixed inputs (cosine >= `MIN_COSINE` or it is not used), and written atomically
into its own folder, named by a digest of what it depends on: the model id, a digest of the weights, the export
settings and the versions of torch, onnx, onnxscript and onnxruntime. A changed input gives another folder (the
stale ones are removed); a folder whose file does not match its recorded sha256 is exported again.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from indexer.embedders.base import resolve_device
from promptdex.errors import ConfigError
from promptdex.settings import Runtime
from promptdex.versions import package_versions

logger = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # change whenever the exported graphs or their inputs change
MIN_COSINE = 0.99999  # an export whose vectors differ more from torch's is not used
EXPORT_FILE = "model.onnx"
RECORD_FILE = "export.json"
_VERSIONED = ("torch", "onnx", "onnxscript", "onnxruntime")


class ExportFailed(RuntimeError):
    """The encoder could not be exported, or its export does not match torch."""


def onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def resolve_runtime(requested: Runtime | str, device: str) -> str:
    """ "torch" or "onnx" for the RUNTIME setting on this device (ConfigError naming the setting when impossible)."""
    runtime = Runtime(requested)
    if runtime == Runtime.TORCH:
        return "torch"
    resolved = resolve_device(device)
    if runtime == Runtime.ONNX:
        if not onnx_available():
            raise ConfigError("PROMPTDEX_INDEXER__RUNTIME=onnx, but onnxruntime is not installed "
                              "(pip install onnxruntime), or set it to torch")
        if resolved != "cpu":
            raise ConfigError(f"PROMPTDEX_INDEXER__RUNTIME=onnx runs the encoders on the CPU, but "
                              f"PROMPTDEX_INDEXER__DEVICE is {device!r} ({resolved}): set DEVICE=cpu or RUNTIME=torch")
        return "onnx"
    return "onnx" if resolved == "cpu" and onnx_available() else "torch"


def onnx_twin(torch_embedder: Any, export: Callable[..., Any], onnx_dir: Path | None, *, threads: int,
              strict: bool, what: str) -> Any:
    """`export(torch_embedder, onnx_dir, threads=...)`'s ONNX Runtime twin, the torch model then dropped; when the
    export fails: ConfigError naming the setting with `strict` (RUNTIME=onnx asked for it), else a warning and the
    torch embedder (`what` names it in the warning)."""
    if onnx_dir is None:
        raise ConfigError("the ONNX runtime needs a folder for its exports (PROMPTDEX_INDEXER__ONNX_DIR)")
    try:
        twin = export(torch_embedder, onnx_dir, threads=threads)
    except ExportFailed as exc:
        if strict:
            raise ConfigError(f"PROMPTDEX_INDEXER__RUNTIME=onnx: {exc} (set RUNTIME=torch)") from exc
        logger.warning("%s; %s runs on torch", exc, what)
        return torch_embedder
    torch_embedder.model = None  # the twin has all it needs: free the torch copy of the weights
    release_memory()
    return twin


def weights_digest(module: Any) -> str:
    """A digest of a torch module's parameters and buffers (names, shapes, dtypes and bytes)."""
    import torch

    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc), after dropping a torch model."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def cosines(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.float64]:
    """Row-wise cosine similarity of two matrices of the same shape."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.asarray((a64 * b64).sum(axis=1) / np.where(norms > 0, norms, 1.0))


@dataclass
class OnnxSession:
    """One ONNX Runtime session on the CPU; `threads` 0 lets it use every core."""

    path: Path
    threads: int = 0
    session: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        if self.threads == 1:  # the API: requests run in parallel, a spinning pool would only take their cores;
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            # and every query batch has another shape: no arena or per-shape memory plans kept (as fast, measured)
            options.enable_cpu_mem_arena = False
            options.enable_mem_pattern = False
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - a damaged file, reported with its name
            raise ExportFailed(f"{self.path}: ONNX Runtime cannot load it: {type(exc).__name__}: {exc}") from exc
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, inputs: Mapping[str, NDArray[Any]]) -> NDArray[np.float32]:
        return np.asarray(self.session.run(None, dict(inputs))[0], dtype=np.float32)


@dataclass(frozen=True)
class ExportSpec:
    """One tower to export: what it is (for the cache key) and how to make it from the loaded torch model."""

    tower: str  # "clip-text", "clip-vision", "sentence"
    model_id: str
    weights: str  # weights_digest of the model
    settings: Mapping[str, Any]  # how it is exported (input names, dynamic dimensions, opset...)

    def key(self) -> dict[str, Any]:
        return {"format": EXPORT_FORMAT, "tower": self.tower, "model": self.model_id, "weights": self.weights,
                "settings": dict(self.settings), "versions": package_versions(_VERSIONED)}

    def folder(self, cache_dir: Path) -> Path:
        key = hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:16]
        return cache_dir / f"{self._prefix()}{key}"

    def _prefix(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{self.model_id}-{self.tower}")[:120] + "-"


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _usable(folder: Path, spec: ExportSpec) -> bool:
    """Whether `folder` holds a complete export of `spec` whose file matches its record."""
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
        model = folder / EXPORT_FILE
        if record.get("key") != spec.key() or model.stat().st_size != record.get("bytes"):
            return False
        return bool(_sha256(model) == record.get("sha256"))
    except (OSError, ValueError, AttributeError):
        return False


def _prune(cache_dir: Path, spec: ExportSpec, keep: Path) -> None:
    """Remove the other exports of the same model and tower (stale keys) and leftover temporary folders."""
    prefix = spec._prefix()
    for entry in cache_dir.iterdir():
        name = entry.name
        stale = name.startswith(prefix) and entry != keep
        leftover = name.startswith(".tmp-" + prefix) and not _writer_alive(name)
        if stale or leftover:
            shutil.rmtree(entry, ignore_errors=True)


def _writer_alive(name: str) -> bool:
    pid = name.rsplit("-", 1)[-1]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


Check = Callable[[OnnxSession], NDArray[np.float64]]


def ensure_export(cache_dir: Path, spec: ExportSpec, make: Callable[[], tuple[Any, tuple[Any, ...], dict[str, Any]]],
                  check: Check) -> Path:
    """The cached export of `spec` (its model.onnx), exported first when missing, stale or damaged.

    `make()` gives (module, example inputs, dynamic shapes) for torch.onnx.export; `check(session)` gives the
    cosines of the export's vectors against torch's on fixed inputs. Raises ExportFailed.
    """
    folder = spec.folder(cache_dir)
    if _usable(folder, spec):
        return folder / EXPORT_FILE
    if folder.exists():
        logger.warning("%s: the cached ONNX export is incomplete or damaged; exporting it again", folder)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".tmp-{folder.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    logger.warning("exporting %s (%s) to ONNX Runtime into %s (once; up to a minute)", spec.model_id, spec.tower,
                   cache_dir)
    try:
        started = time.perf_counter()
        _export(tmp / EXPORT_FILE, *make())
        found = check(OnnxSession(tmp / EXPORT_FILE, threads=0))
        worst = float(found.min())
        if not worst >= MIN_COSINE:
            raise ExportFailed(f"the ONNX export of {spec.model_id} ({spec.tower}) gives vectors at cosine {worst:.7f} "
                               f"of torch's (at least {MIN_COSINE} needed)")
        model = tmp / EXPORT_FILE
        record = {"key": spec.key(), "bytes": model.stat().st_size, "sha256": _sha256(model),
                  "min_cosine": worst, "export_seconds": round(time.perf_counter() - started, 1)}
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1))
        for path in (model, tmp / RECORD_FILE):
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished the same export first: use its folder
            if not _usable(folder, spec):
                raise
        logger.info("exported %s (%s) to ONNX in %.1f s: %s (cosine to torch >= %.7f)", spec.model_id, spec.tower,
                    record["export_seconds"], folder, worst)
    except ExportFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - exporter failures of every kind: the caller falls back or reports
        raise ExportFailed(f"cannot export {spec.model_id} ({spec.tower}) to ONNX in {cache_dir}: "
                           f"{type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _prune(cache_dir, spec, folder)
    return folder / EXPORT_FILE


def _export(path: Path, module: Any, example: tuple[Any, ...], dynamic_shapes: dict[str, Any]) -> None:
    import io
    import logging as _logging
    import warnings
    from contextlib import redirect_stdout

    import torch

    quiet = io.StringIO()
    for name in ("torch.onnx", "torch.export", "onnx_ir", "onnxscript"):
        _logging.getLogger(name).setLevel(_logging.WARNING)
    with warnings.catch_warnings(), redirect_stdout(quiet), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        # positional: the graph's input names come from the keys, whatever the module calls its arguments
        program = torch.onnx.export(module, example, dynamo=True, dynamic_shapes=tuple(dynamic_shapes.values()),
                                    input_names=list(dynamic_shapes), output_names=["vectors"], optimize=True,
                                    verbose=False)
        if program is None:
            raise ExportFailed("torch.onnx.export returned no program")
        program.save(str(path))


def dims(names: Sequence[str], **bounds: tuple[int, int]) -> dict[str, Any]:
    """torch.export dynamic dimensions by name, e.g. dims(["batch"], batch=(1, 4096))."""
    from torch.export import Dim

    return {name: Dim(name, min=bounds[name][0], max=bounds[name][1]) for name in names}
