"""Relax passes of scalpel-tvm (installed as `scalpel_tvm.passes`).

`ShrinkNodes` removes dead neurons and filters exactly; `LowerLayers` turns each layer and its
epilogue into a `call_tir` to a scheduled kernel. `scalpel_tvm.Pass` composes them with a plan.
"""
from .lower_layers import LowerLayers
from .shrink_nodes import ShrinkNodes

__all__ = ["ShrinkNodes", "LowerLayers"]
