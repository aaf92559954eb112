"""How far apart two models' test accuracies really are: the paired difference and its interval.

"No accuracy loss" is judged to a tenth of a point, which on MNIST's 10,000 test images is ten
images. Both models answer the same images, so the question is how many images changed: a
pruned model that fixes 40 images and breaks 50 is 0.10 points down, but a test set drawn again
would give anything from about -0.29 to +0.09. The Wald interval of a difference of paired
proportions (the statistic behind McNemar's test) says so from the changed images alone.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import ScalpelError

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def paired_difference(before_correct, after_correct) -> dict:
    """The accuracy change from `before` to `after`, scored per image (bool arrays, same images).

    Returns `difference` (after - before, a fraction), `interval95` (its 95% Wald interval),
    `fixed` (images only `after` gets right), `broken` (only `before` gets right) and `images`.
    """
    before = np.asarray(before_correct, dtype=bool)
    after = np.asarray(after_correct, dtype=bool)
    if before.ndim != 1 or before.shape != after.shape or before.size == 0:
        raise ScalpelError(f"paired accuracy needs two per-image score vectors of one length, got shapes "
                           f"{before.shape} and {after.shape}")
    images = before.size
    fixed = int(np.count_nonzero(after & ~before))
    broken = int(np.count_nonzero(before & ~after))
    difference = (fixed - broken) / images
    variance = ((fixed + broken) / images - difference ** 2) / images
    half = Z95 * math.sqrt(max(variance, 0.0))
    return {"difference": difference, "interval95": [difference - half, difference + half],
            "fixed": fixed, "broken": broken, "images": images}


def describe(paired: dict) -> str:
    """`+0.12 points (95% interval -0.05 to +0.29; of 10,000 images 61 fixed, 49 broken)`."""
    low, high = (100 * v for v in paired["interval95"])
    return (f"{100 * paired['difference']:+.2f} points (95% interval {low:+.2f} to {high:+.2f}; "
            f"of {paired['images']:,} images {paired['fixed']} fixed, {paired['broken']} broken)")


def onnx_correct(model, data, batch: int = 1000) -> np.ndarray:
    """Per test image of `data` (a `datasets.Dataset`), whether the ONNX `model`'s top-1 class,
    run by onnxruntime, is the label."""
    import onnxruntime as ort

    from .onnx_import import input_shapes

    (name, shape), = input_shapes(model, batch).items()  # a fixed batch stays as exported
    data.check_fits(tuple(shape[1:]), data.classes)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hits = []
    for start in range(0, len(data.test_x), shape[0]):
        x = np.zeros(shape, np.float32)  # the last batch padded when the batch is fixed
        images = data.test_x[start:start + shape[0]]
        x[:len(images)] = images.reshape(-1, *shape[1:])
        labels = data.test_y[start:start + shape[0]]
        hits.append(session.run(None, {name: x})[0][:len(labels)].argmax(1) == labels)
    return np.concatenate(hits)
