"""Demo models for the test Triton server: Python-backend model directories built from scratch.

`build_digits_model` trains a real classifier (multinomial logistic regression on
scikit-learn's bundled 8x8 digits data set, no download; the trained weights are cached)
and writes it as a Triton Python-backend model: the weights as `.npy` files (no pickle),
a numpy-only `model.py` that returns softmax probabilities, `config.pbtxt` and
`labels.txt` (so Triton's classification extension returns "score:index:label" strings).
The build is deterministic: the same inputs give byte-identical files.

`build_identity_model` writes an echo model (OUTPUT = INPUT) for gateway benchmarks.

Layout written under `dest/<name>/`:

    config.pbtxt
    labels.txt
    1/model.py
    1/coef.npy        float32 [10, 64]
    1/intercept.npy   float32 [10]
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from modelseal_devenv.common import cache_dir

DIGITS_INPUT: Final = "INPUT"
DIGITS_OUTPUT: Final = "PROBABILITIES"
DIGITS_FEATURES: Final = 64  # 8x8 pixels, values 0..16
DIGITS_CLASSES: Final = 10
DIGITS_LABELS: Final = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
PIXEL_MAX: Final = 16.0  # the digits data set stores pixel intensities 0..16

IDENTITY_INPUT: Final = "INPUT"
IDENTITY_OUTPUT: Final = "OUTPUT"

_SPLIT_SEED: Final = 0
_TEST_SIZE: Final = 360  # held-out samples served by sample_digits()
_MAX_BATCH: Final = 64
_C: Final = 1.0
_TOL: Final = 1e-6

_DIGITS_MODEL_PY: Final = '''\
"""Digits classifier (multinomial logistic regression), numpy only.

Input  INPUT          FP32 [batch, 64]  8x8 grey image, pixel values 0..16
Output PROBABILITIES  FP32 [batch, 10]  softmax over the digits 0..9
"""

import os

import numpy as np
import triton_python_backend_utils as pb_utils

PIXEL_MAX = {pixel_max!r}


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.coef = np.load(os.path.join(version_dir, "coef.npy"), allow_pickle=False)
        self.intercept = np.load(os.path.join(version_dir, "intercept.npy"), allow_pickle=False)
        self.features = self.coef.shape[1]

    def execute(self, requests):
        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "{input}")
            x = tensor.as_numpy().astype(np.float32, copy=False)
            if x.ndim != 2 or x.shape[1] != self.features:
                error = pb_utils.TritonError(
                    f"{input} must have shape [batch, {{self.features}}], got {{list(x.shape)}}"
                )
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
                continue
            logits = (x / PIXEL_MAX) @ self.coef.T + self.intercept
            logits -= logits.max(axis=1, keepdims=True)
            exp = np.exp(logits)
            probs = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
            out = pb_utils.Tensor("{output}", probs)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses

    def finalize(self):
        self.coef = None
        self.intercept = None
'''

_DIGITS_CONFIG: Final = """\
name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [
  {{
    name: "{input}"
    data_type: TYPE_FP32
    dims: [ {features} ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: TYPE_FP32
    dims: [ {classes} ]
    label_filename: "labels.txt"
  }}
]
instance_group [
  {{
    count: 1
    kind: KIND_CPU
  }}
]
dynamic_batching {{ }}
"""

_IDENTITY_MODEL_PY: Final = '''\
"""Identity model: OUTPUT is INPUT, for gateway and proxy benchmarks."""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "{input}").as_numpy()
            out = pb_utils.Tensor("{output}", data)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
'''

_IDENTITY_CONFIG: Final = """\
name: "{name}"
backend: "python"
max_batch_size: {max_batch}
input [
  {{
    name: "{input}"
    data_type: {dtype}
    dims: [ -1 ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: {dtype}
    dims: [ -1 ]
  }}
]
instance_group [
  {{
    count: {instances}
    kind: KIND_CPU
  }}
]
"""

_IDENTITY_DTYPES: Final = frozenset(
    {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "BOOL", "BYTES"}
)


def _digits_csv() -> Path:
    """scikit-learn's bundled digits.csv.gz, found without importing scikit-learn (slow)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-learn is not installed; it ships the digits data set")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise RuntimeError(f"scikit-learn ships no digits data at {path}")
    return path


@functools.cache
def _digits_data() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], str]:
    """(images [1797, 64], labels [1797], sha256 of the file) — what load_digits() returns."""
    raw = _digits_csv().read_bytes()
    table = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=np.float64)
    images = np.ascontiguousarray(table[:, :-1], dtype=np.float32)
    labels = np.ascontiguousarray(table[:, -1], dtype=np.int64)
    return images, labels, hashlib.sha256(raw).hexdigest()


def _digits_split() -> tuple[
    npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]
]:
    """The digits data set and a fixed, seeded train/test split (indices)."""
    images, labels, _ = _digits_data()
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(labels)).astype(np.int64)
    return images, labels, order[:-_TEST_SIZE], order[-_TEST_SIZE:]


def _fit_digits() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    from sklearn.linear_model import LogisticRegression

    images, labels, train, _ = _digits_split()
    model = LogisticRegression(C=_C, max_iter=2000, tol=_TOL)
    model.fit(images[train] / PIXEL_MAX, labels[train])
    coef = np.ascontiguousarray(model.coef_, dtype=np.float32)
    intercept = np.ascontiguousarray(model.intercept_, dtype=np.float32)
    assert coef.shape == (DIGITS_CLASSES, DIGITS_FEATURES)
    assert intercept.shape == (DIGITS_CLASSES,)
    return coef, intercept


def train_digits(use_cache: bool = True) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Train the classifier; returns (coef [10, 64], intercept [10]) as float32.

    Importing scikit-learn and fitting take seconds, so the weights are kept in the cache
    dir, keyed by the data, the training settings and the scikit-learn and numpy versions.
    """
    if not use_cache:
        return _fit_digits()
    key_src = json.dumps(
        {
            "data": _digits_data()[2],
            "seed": _SPLIT_SEED,
            "test": _TEST_SIZE,
            "C": _C,
            "tol": _TOL,
            "sklearn": importlib.metadata.version("scikit-learn"),
            "numpy": np.__version__,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    folder = cache_dir() / "models" / f"digits-{key}"
    try:
        coef = np.load(folder / "coef.npy", allow_pickle=False)
        intercept = np.load(folder / "intercept.npy", allow_pickle=False)
        if coef.shape == (DIGITS_CLASSES, DIGITS_FEATURES) and intercept.shape == (DIGITS_CLASSES,):
            return coef.astype(np.float32), intercept.astype(np.float32)
    except (OSError, ValueError):
        pass
    coef, intercept = _fit_digits()
    with contextlib.suppress(OSError):  # a read-only cache only costs time
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".digits-", dir=folder.parent))
        np.save(staging / "coef.npy", coef, allow_pickle=False)
        np.save(staging / "intercept.npy", intercept, allow_pickle=False)
        try:
            staging.rename(folder)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process was first
    return coef, intercept


def sample_digits(n: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """`n` held-out digits the model never saw: images FP32 [n, 64] (0..16), labels [n]."""
    if not 0 < n <= _TEST_SIZE:
        raise ValueError(f"n must be in 1..{_TEST_SIZE}, got {n}")
    images, labels, _, test = _digits_split()
    chosen = test[:n]
    return np.ascontiguousarray(images[chosen]), np.ascontiguousarray(labels[chosen])


def predict_digits(
    coef: npt.NDArray[np.float32],
    intercept: npt.NDArray[np.float32],
    images: npt.NDArray[np.float32],
) -> npt.NDArray[np.float32]:
    """The same computation as the served model.py, for checking answers locally."""
    logits = (images.astype(np.float32) / PIXEL_MAX) @ coef.T + intercept
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float32)


def _fresh_dir(dest: Path, name: str) -> Path:
    if not name or "/" in name or name in {".", ".."}:
        raise ValueError(f"bad model name {name!r}")
    model_dir = dest / name
    if model_dir.exists():
        shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    return model_dir


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    path.chmod(0o644)


def build_digits_model(dest: Path, name: str = "digits") -> Path:
    """Write the digits classifier as a Triton model directory `dest/name`; returns it.

    An existing `dest/name` is replaced. `dest` is the model repository (it may be tmpfs).
    """
    coef, intercept = train_digits()
    model_dir = _fresh_dir(Path(dest), name)
    version_dir = model_dir / "1"
    np.save(version_dir / "coef.npy", coef, allow_pickle=False)
    np.save(version_dir / "intercept.npy", intercept, allow_pickle=False)
    fmt = {
        "name": name,
        "input": DIGITS_INPUT,
        "output": DIGITS_OUTPUT,
        "features": DIGITS_FEATURES,
        "classes": DIGITS_CLASSES,
        "max_batch": _MAX_BATCH,
        "pixel_max": PIXEL_MAX,
    }
    _write(version_dir / "model.py", _DIGITS_MODEL_PY.format(**fmt))
    _write(model_dir / "config.pbtxt", _DIGITS_CONFIG.format(**fmt))
    _write(model_dir / "labels.txt", "".join(f"{label}\n" for label in DIGITS_LABELS))
    for npy in version_dir.glob("*.npy"):
        npy.chmod(0o644)
    return model_dir


def build_identity_model(
    dest: Path,
    name: str = "identity",
    dtype: str = "FP32",
    max_batch_size: int = _MAX_BATCH,
    instances: int = 1,
) -> Path:
    """Write an echo model (OUTPUT = INPUT, dims [-1] of `dtype`) as `dest/name`; returns it."""
    if dtype not in _IDENTITY_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_IDENTITY_DTYPES)}, got {dtype!r}")
    model_dir = _fresh_dir(Path(dest), name)
    fmt = {
        "name": name,
        "input": IDENTITY_INPUT,
        "output": IDENTITY_OUTPUT,
        "dtype": f"TYPE_{'STRING' if dtype == 'BYTES' else dtype}",
        "max_batch": max_batch_size,
        "instances": instances,
    }
    _write(model_dir / "1" / "model.py", _IDENTITY_MODEL_PY.format(**fmt))
    _write(model_dir / "config.pbtxt", _IDENTITY_CONFIG.format(**fmt))
    return model_dir
