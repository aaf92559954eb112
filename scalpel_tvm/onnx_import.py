"""ONNX → Relax with the checks a user needs before the pass: readable file, fixed shapes."""
from __future__ import annotations

import os

import onnx
import tvm
from tvm import relax
from tvm.relax.frontend import onnx as relax_onnx

from .errors import ScalpelError


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an ONNX file; a clear error for anything that is not a valid model."""
    try:
        model = onnx.load(os.fspath(path))
        onnx.checker.check_model(model)
    except FileNotFoundError:
        raise ScalpelError(f"no such ONNX file: {path}") from None
    except Exception as err:  # onnx raises DecodeError, ValidationError, ...
        raise ScalpelError(f"{path} is not a valid ONNX model ({type(err).__name__}: {err}); "
                           "re-export it, e.g. with torch.onnx.export") from None
    return model


def input_shapes(model: onnx.ModelProto, batch: int = 1) -> dict[str, list[int]]:
    """Static shapes for the graph inputs: a symbolic leading dimension becomes `batch`."""
    weights = {init.name for init in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in weights:
            continue
        dims = value.type.tensor_type.shape.dim
        shape = []
        for axis, dim in enumerate(dims):
            if dim.HasField("dim_value") and dim.dim_value == 0:
                raise ScalpelError(f"input '{value.name}' has size 0 in dimension {axis}: "
                                   "an empty input leaves nothing to compute; check the export")
            if dim.HasField("dim_value"):
                shape.append(dim.dim_value)
            elif axis == 0:
                shape.append(batch)
            else:
                raise ScalpelError(
                    f"input '{value.name}' has a dynamic dimension {axis} "
                    f"('{dim.dim_param or '?'}'); only the batch dimension may be symbolic. "
                    "Fix the shape in the model (onnx.tools.update_model_dims) first")
        shapes[value.name] = shape
    return shapes


def import_onnx(model: onnx.ModelProto | str | os.PathLike, batch: int = 1) -> tvm.IRModule:
    """The Relax module of an ONNX model, weights bound as constants, batch fixed to `batch`."""
    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model)
    return relax_onnx.from_onnx(model, shape_dict=input_shapes(model, batch))


def bind_weights(mod: tvm.IRModule) -> tvm.IRModule:
    """Turn weights passed as parameters (`from_onnx(..., keep_params_in_input=True)`, with the
    values in the function's "params" attribute) into bound constants, as the pass needs."""
    mod, params = relax.frontend.detach_params(mod)
    func = mod["main"]
    num_input = int(func.attrs["num_input"])
    values = dict(zip((p.name for p in func.params[num_input:]), params["main"]))
    return relax.transform.BindParams("main", values)(mod)
