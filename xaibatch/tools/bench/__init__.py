"""``xaibatch bench``: xaibatch end to end against the model's limits and the reference libraries, in one process.

On one generated folder of PNG files and one randomly initialised timm model
(the same weights for everyone) it times, in images per second:

* the limits: the model's forward pass alone (at the run's batch size and at
  LIME's model batch), and forward plus backward to the input (no weight
  gradients) at the run's batch size;
* xaibatch end to end: real :func:`xaibatch.pipeline.run` calls over the folder
  (DataLoader workers read and decode, the model computes, the writer thread
  writes ``.npy`` and PNG files and the manifest), timed over the run's compute
  phase (``RunResult.timings["compute"]``), so the fixed start-up (model load,
  folder scan) and the report render are left out (the report is rendered only
  by each method's main end-to-end row, whose note shows its cost);
* xaibatch's methods alone on tensors already in memory, through the runs' own
  :class:`~xaibatch.methods.explainer.Explainer` (what the end-to-end figure
  loses to files shows as the gap between the two);
* the peers on the same model and tensors: pytorch-grad-cam's ``GradCAM`` per
  image and batched, its guided backprop per image (with ``GradCAM``, as its
  usage does), captum's ``GuidedGradCam`` batched, the ``lime`` package's
  ``explain_instance`` per image and captum's ``Lime`` per image (both with
  xaibatch's superpixels and fill, 1000 samples, the same model batch).

Per-image rows (the peers' per-image usage, LIME's peers) time a subset of
the images: their rate is per image anyway, and the
whole set would cost minutes. Each job runs once to warm up, then once per
round for ``repeats`` rounds; the rounds interleave the implementations of one
method family, and each job keeps its best round, so a burst of load from
other processes does not land on one implementation only. ``--memory``
instead measures peak memory of runs over generated folders of two sizes.

With a budget (``BenchOptions.budget``, the CLI's ``--budget``) the time is
bounded by design: each round of a row gets a share of the time left
(``timing.Budget``; a pipeline run's share is larger, for its start-up) and
measures as many images as fit in it (``timing.Slice``): loops stop when the
next batch would not fit, pipeline runs plan their images from the previous
round's rate. Every row is measured at least once, over at least one batch (one
image for LIME and the per-image peers), so a spent budget costs precision, not
rows; the table's images column says what each rate was measured over.

Modules: ``options`` (what is asked, what comes back), ``inputs`` (the generated
files and arrays), ``context`` (the model and tensors every job shares),
``ours`` and ``parts`` (xaibatch's rows), ``peers``, ``timing``, ``ratios``,
``format``, ``memory``, and ``runner`` (:func:`run_bench`).
"""

from .format import format_result
from .memory import format_memory, memory_check
from .options import FAMILIES, BenchOptions, BenchResult, Ratio, Row
from .runner import run_bench

__all__ = [
    "FAMILIES",
    "BenchOptions",
    "BenchResult",
    "Ratio",
    "Row",
    "format_memory",
    "format_result",
    "memory_check",
    "run_bench",
]
