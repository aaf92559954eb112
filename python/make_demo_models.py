"""Write the demo's ONNX models (Scalpel-pruned and dense LeNet-300-100 and LeNet-5) into the
package, from the seeded builders in scalpel_tvm/models.py. Run it after changing those builders."""
import onnx

from scalpel_tvm import models
from scalpel_tvm.demo import ensure_demo_models

for path in ensure_demo_models(overwrite=True):
    print(f"{path}: {models.weights_removed(onnx.load(path)):.1%} of weights zero")
