"""Write the demo's ONNX models (Scalpel-pruned and dense LeNet-300-100 and LeNet-5) into the
package, from the seeded builders in scalpel_tvm/models.py. Run it after changing those builders."""
import onnx

from scalpel_tvm import models
from scalpel_tvm.demo import NETWORKS, demo_model_path

for network, build in NETWORKS.items():
    for pruned in (False, True):
        path = demo_model_path(network, pruned)
        path.parent.mkdir(parents=True, exist_ok=True)
        model = build(pruned=pruned)
        onnx.save(model, path)
        print(f"{path}: {models.weights_removed(model):.1%} of weights zero")
