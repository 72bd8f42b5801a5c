"""Run a serialized model (TorchScript or ONNX bytes) on numpy feature batches, and check what
it returns.

A :class:`ModelRunner` is what travels to the Flink workers: it pickles as plain bytes and a few
strings, loads the model once in :meth:`open`, and predicts on whole batches;
:func:`prediction_values` turns its output into the prediction column's values.
"""

import io
import os
import warnings
from typing import Any, List, Optional, Sequence

import numpy as np

from ..errors import InvalidDataError
from .trust import check_onnx

__all__ = ["ModelRunner", "prediction_values"]


class ModelRunner:
    """Loads model bytes of a given format once and runs batches through them."""

    def __init__(self, model_format: str, model_bytes: bytes, input_names: Sequence[str],
                 num_threads: int = 0):
        self.model_format = model_format
        self.model_bytes = model_bytes
        self.input_names = list(input_names)
        self.num_threads = num_threads
        self._model: Any = None  # an onnxruntime session or a TorchScript module once open

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_model"] = None  # never ship a loaded session
        return state

    def open(self, parallelism: Optional[int] = None, own_process: bool = True) -> None:
        """Load the model; threads default to cores / parallelism to avoid oversubscription.
        ``own_process=False`` (a function running inside the user's process, PyFlink's
        loopback mode) leaves torch's process-wide thread count alone."""
        if self._model is not None:
            return
        threads = self.num_threads or max(1, (os.cpu_count() or 1) // max(1, parallelism or 1))
        if self.model_format == "onnx":
            import onnxruntime as ort

            check_onnx(self.model_bytes, "The ONNX model")  # before onnxruntime reads files

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            self._model = ort.InferenceSession(self.model_bytes, sess_options=options,
                                               providers=["CPUExecutionProvider"])
        elif self.model_format == "torchscript":
            import torch

            if own_process:
                torch.set_num_threads(threads)
            self._model = torch.jit.load(io.BytesIO(self.model_bytes), map_location="cpu").eval()
        else:
            raise ValueError(f"Unknown model format {self.model_format!r}")

    def predict(self, inputs: List[np.ndarray]) -> np.ndarray:
        """Run one batch; each input is a ``[batch, width]`` array in ``input_names`` order."""
        if self._model is None:
            self.open()
        if self.model_format == "onnx":
            return self._model.run(None, dict(zip(self.input_names, inputs)))[0]
        import torch

        with torch.inference_mode(), warnings.catch_warnings():
            # Arrow hands us read-only buffers; the model only reads its inputs.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            out = self._model(*[torch.from_numpy(a) for a in inputs])
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"The model returned {type(out).__name__}; it must return one tensor")
        return out.numpy()

    def close(self) -> None:
        self._model = None


def prediction_values(output: np.ndarray, rows: int, spec) -> np.ndarray:
    """A model output of shape ``[rows]``, ``[rows, 1]`` or ``[rows, k]`` as the values of
    ``spec``'s prediction column: ``[rows]`` for a scalar type, ``[rows, k]`` for an array
    type, in its dtype. Raises InvalidDataError when the shape does not fit."""
    output = np.asarray(output)
    if output.ndim == 0 or output.shape[0] != rows:
        raise InvalidDataError(f"The model returned shape {tuple(output.shape)} for a batch of "
                               f"{rows} rows; the first dimension must be the batch")
    width = int(np.prod(output.shape[1:], dtype=np.int64))
    if width != spec.output_width:
        raise InvalidDataError(f"The model returned {width} values per row; "
                               f"'{spec.prediction_col}' expects {spec.output_width}")
    dtype = spec.prediction_type.numpy_dtype
    shape = (rows, width) if spec.prediction_type.is_array else (rows,)
    return output.reshape(shape).astype(dtype, copy=False)
