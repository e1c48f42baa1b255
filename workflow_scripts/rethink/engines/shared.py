"""What both engines build alike, and the workflow outside engines/ reads of them: VGG16's conv
blocks (both engines build the paper's VGG16 from them; the staging converts torchvision's VGG16
by them) and the sizes of test-time augmentation (both engines predict at them; the evaluation and
its cost estimate count them). Engine-neutral: plain Python, no torch, no detectron2, so the
planning (rethink.evalcost) imports it at no cost.
"""

from __future__ import annotations

# VGG16 (configuration "D") up to conv5_3 without pool5: stride 16, 512 channels. Its conv blocks:
# output channels of each 3x3 conv (a 2x2 max-pool follows blocks 1-4)
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

# detectron2's TEST.AUG defaults (config/defaults.py; rethink.engines.detectron2_config.DEFAULTS):
# the shorter sides at the paper's test size (800) and the longer-side cap at its 1333
TEST_AUG_MIN_SIZES = (400, 500, 600, 700, 800, 900, 1000, 1100, 1200)
TEST_AUG_MAX_SIZE = 4000


def test_aug_sizes(recipe: dict) -> tuple[list[int], int]:
    """(shorter sides, longer-side cap) of test-time augmentation: detectron2's TEST.AUG
    (TEST_AUG_MIN_SIZES, TEST_AUG_MAX_SIZE) scaled by min_size_test / 800 and max_size_test / 1333,
    so the paper's test size gives detectron2's exactly and a tiny config a proportionally tiny set.
    Both engines use it."""
    lo, hi = int(recipe["min_size_test"]), int(recipe["max_size_test"])
    sizes = sorted({max(1, round(lo * s / 800)) for s in TEST_AUG_MIN_SIZES})
    return sizes, max(hi, round(hi * TEST_AUG_MAX_SIZE / 1333))
