"""xaibatch: audit what an image classifier looks at, over whole folders.

Grad-CAM, Guided Grad-CAM and LIME, batched on the device, saved to disk and
rendered into a static HTML report.
"""

__version__ = "0.1.0"

# Bumped whenever the numbers written into a map change meaning (normalization,
# resizing, method definition). Part of every configuration hash, so a re-run
# after such a change recomputes instead of trusting old maps.
MAP_FORMAT_VERSION = 1
