"""``xaibatch run`` as a library call: prepare -> plan -> compute (explain + write) -> report.

::

    prepare.py   load the model, scan the folder, check the options: everything that can fail before a write
    plan.py      configuration hashes, and per image what is new, changed, gone or stale (a Plan)
    apply.py     what the plan changes without the model: rows and files of gone images, stale maps, new thresholds
    compute.py   the local engine: DataLoader -> Explainer (methods/explainer.py) -> pictures on the device -> a WriteJob per batch
    writer.py    encode and write each job's files, then commit its rows (one transaction per batch)
    signals.py   SIGINT/SIGTERM/SIGHUP: stop after the current batch
    recovery.py  after an unclean stop: sweep temporary and unreferenced files
    restart.py   after a restart of the machine: the files a power cut left empty or cut short, deleted to be written again
    ray_engine.py  --engine ray: the batches in Ray Data actors (ray_worker.py: BatchWorker, write_files), commits here;
                   ray_connect.py joins the cluster (the engines' registry: xaibatch/engines.py)
    run.py       run(): the lock, the steps above in order, predictions.csv and the report
"""

from .guards import default_out
from .options import RayOptions, RunOptions, RunResult
from .run import run

__all__ = ["RayOptions", "RunOptions", "RunResult", "default_out", "run"]
