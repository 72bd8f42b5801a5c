"""Convert a torch module into the bytes of a TorchScript or ONNX model, and check the result.

Shipping a model as TorchScript/ONNX bytes means a Flink TaskManager needs neither the user's
model class nor a shared filesystem: the bytes travel inside the UDF.
"""

import io
import warnings
from typing import List, Sequence

import numpy as np
import torch

from ..errors import ModelExportError

__all__ = ["FORMATS", "to_torchscript", "to_onnx", "check_onnx", "export_model"]

FORMATS = ("torchscript", "onnx")


def export_model(module: torch.nn.Module, spec, model_format: str) -> bytes:
    """The module's bytes in ``model_format`` for a ``ModelSpec`` (ONNX is checked against
    the module on a sample batch)."""
    sample = spec.sample_inputs()
    if model_format == "onnx":
        model_bytes = to_onnx(module, sample, spec.feature_cols)
        check_onnx(model_bytes, module, sample, spec.feature_cols)
        return model_bytes
    if model_format == "torchscript":
        return to_torchscript(module, sample)
    raise ValueError(f"Unknown format {model_format!r}; use one of {', '.join(FORMATS)}")


def to_torchscript(module: torch.nn.Module, sample_inputs: Sequence[torch.Tensor]) -> bytes:
    """Script the module (or trace it on the sample if scripting fails) and return its bytes."""
    if isinstance(module, torch.jit.ScriptModule):
        scripted = module
    else:
        module = module.eval()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scripted = torch.jit.script(module)
        except Exception as script_error:  # many valid modules cannot be scripted; trace them
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    scripted = torch.jit.trace(module, tuple(sample_inputs), check_trace=False)
            except Exception as trace_error:
                raise ModelExportError(
                    f"Could not convert {type(module).__name__} to TorchScript: scripting failed "
                    f"({script_error}) and tracing failed ({trace_error})") from trace_error
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # torch.jit.save is deprecated in favour of torch.export,
        warnings.simplefilter("ignore")  # which cannot save a module for torch.jit.load yet
        torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def to_onnx(module: torch.nn.Module, sample_inputs: Sequence[torch.Tensor],
            input_names: List[str], opset_version: int = 17) -> bytes:
    """Export to ONNX with a dynamic batch axis on every input and the output."""
    module = module.eval()
    dynamic_axes = {name: {0: "batch"} for name in input_names + ["prediction"]}
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the stub types f as a path, but the TorchScript-based exporter writes file objects
            torch.onnx.export(module, tuple(sample_inputs), buffer,  # type: ignore[arg-type]
                              input_names=input_names,
                              output_names=["prediction"], dynamic_axes=dynamic_axes,
                              opset_version=opset_version, dynamo=False)
    except Exception as error:
        raise ModelExportError(f"ONNX export of {type(module).__name__} failed: {error}") from error
    return buffer.getvalue()


def check_onnx(onnx_bytes: bytes, module: torch.nn.Module, sample_inputs: Sequence[torch.Tensor],
               input_names: List[str], atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Run the ONNX model with onnxruntime on the sample and compare with the torch module."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(onnx.load_from_string(onnx_bytes))
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        got = session.run(None, {n: t.numpy() for n, t in zip(input_names, sample_inputs)})[0]
    except Exception as error:
        raise ModelExportError(f"The exported ONNX model does not run in onnxruntime: {error}")
    with torch.no_grad():
        expected = module.eval()(*sample_inputs).numpy()
    if got.shape != expected.shape or not np.allclose(got, expected, atol=atol, rtol=rtol):
        raise ModelExportError(
            f"The exported ONNX model disagrees with the torch module on a sample batch "
            f"(shapes {got.shape} vs {expected.shape}, max abs diff "
            f"{np.max(np.abs(got - expected)) if got.shape == expected.shape else 'n/a'}); "
            f"the module may have data-dependent control flow that ONNX cannot capture")
