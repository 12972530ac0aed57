"""What a run is set up with: the scanned folder, the configuration hashes and the run row's config.

Two ways to get it. :func:`load_setup` loads the model (torch, timm, the methods) and computes
everything. :func:`cached_setup` reuses the hashes of an earlier finished run with the same
*request* (every option that decides a prediction or a map, the checkpoint's sha256, a ``--model``
factory's file, the folder's classes and xaibatch's version) without importing torch, and is only taken when the plan finds
nothing to compute: an unchanged cron re-run then costs a folder scan and a manifest read.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import MAP_FORMAT_VERSION, __version__, layout
from ..engines import ENGINES
from ..errors import InputError, XaibatchError
from ..manifest import Manifest
from ..model.formats import checkpoint_digest, factory_code_sha256
from ..preprocess import channel_values
from ..runconfig import BadRecord, MethodRecord, ModelRecord, ModelSource, RunConfig
from ..scan import Scan, scan
from .options import RunOptions, checkpoint_path
from .plan import Hashes, Known, Plan, config_hash, existing_files, make_plan

# RunOptions fields that change no prediction and no map: left out of the request.
NOT_IN_REQUEST = (
    "input_dir",
    "out_dir",
    "batch_size",
    "device",
    "decode",
    "workers",
    "writers",
    "template_dir",
    "progress",
    "wait",
    "wait_timeout",
    "on_event",
    "handle_signals",
    "replace",
    "follow_links",
    "engine",
    "ray",
    "heartbeat",
)


@dataclass
class Setup:
    found: Scan
    hashes: Hashes
    names: list[str]  # class names
    layer: str | None  # the CAM layer's name
    config: RunConfig  # what the run row records
    prepared: Any = None  # pipeline.prepare.Prepared; None when cached (the model was not loaded)
    known: Known | None = None  # cached: the manifest and the (empty) plan it was checked with, reused by the run
    plan: Plan | None = None


# Part of every request's hash: bumped when a method's configuration (its hash), or the predictions', gains a field
# or changes meaning within one xaibatch version, so that the next unchanged run of a folder loads the model once and
# its hashes decide what is recomputed, instead of the cached path keeping maps made the old way.
# 2: a one-logit model's cam:* and captum:* maps explain +-z, no longer +-z/2 (their config: one_logit_scores).
# 3: the random methods (LIME, GradientShap, NoiseTunnel) seed each image by its pixels, not its path (their hash:
#    methods.base.IMAGE_SEEDS).
# 4: a --model factory's code joins the predictions' hash (ModelRecord.code_sha256).
REQUEST_REVISION = 4


def request_key(opts: RunOptions, found: Scan, checkpoint_sha256: str) -> str:
    """Hash of everything that decides this run's predictions and maps, computable without the model: ``found`` as
    scanned (its folder classes sorted, before prepare() numbers them in the model's order)."""
    fields = {k: v for k, v in vars(opts).items() if k not in NOT_IN_REQUEST}
    fields["methods"] = list(dict.fromkeys(opts.methods))
    for k in ("mean", "std"):  # as the model gets them; not given: no key (earlier folders' requests unchanged)
        if fields.get(k) is None:
            fields.pop(k, None)
        else:
            fields[k] = list(channel_values(k, fields[k]))
    code = factory_code_sha256(opts.model)  # --model FILE.py:FACTORY or module.path:FACTORY: the code counts
    if code is not None:
        fields["model_code_sha256"] = code
    return config_hash(
        {
            "xaibatch": __version__,
            "map_format": MAP_FORMAT_VERSION,
            "request_revision": REQUEST_REVISION,
            "options": fields,
            "checkpoint_sha256": checkpoint_sha256,
            "classes": found.classes,
            # empty class folders stay classes of a model that names none (prepare.class_names_for)
            **({"empty_classes": found.empty_classes} if found.empty_classes else {}),
        }
    )


def scan_input(opts: RunOptions) -> Scan:
    return scan(opts.input_dir, opts.labeled, opts.follow_links, opts.out_dir, ctime=opts.check_ctime)


def load_setup(opts: RunOptions, found: Scan | None = None) -> Setup:
    """Load the model and the methods (imports torch) and compute the configuration hashes."""
    import torch

    from .plan import config_hashes
    from .prepare import prepare

    engine = ENGINES[opts.engine]
    # --engine ray: the workers load the model on their own devices; the driver needs it only to check and hash.
    driver_opts = dataclasses.replace(opts, device="cpu") if engine.workers_device else opts
    found = found or scan_input(opts)
    scanned = dataclasses.replace(found)  # prepare() numbers found's labels in the model's order: the request is this
    prepared = prepare(driver_opts, found)
    hashes = config_hashes(prepared, opts.target, opts.faithfulness, opts.max_map_side)
    model, layer, methods = prepared.model, prepared.layer, prepared.methods
    source = ModelSource.of(opts)
    options = {m.name: dict(m.options) for m in methods}
    config = RunConfig(
        xaibatch=__version__,
        torch=torch.__version__,
        device=engine.workers_device or str(prepared.device),
        model=ModelRecord(**hashes.predict_config, checkpoint=model.checkpoint),
        layer=layer.name if layer else None,
        layer_grid=list(layer.grid) if layer else None,
        methods={
            m.name: MethodRecord(
                m.title, m.signed, m.config(), hashes.methods[m.name], options[m.name], superpixels=m.superpixels
            )
            for m in methods
        },
        batch_size=prepared.batch_size,
        workers=prepared.workers,
        seed=opts.seed,
        engine=engine.record(opts),
        labeled=prepared.found.classes is not None,
        class_names=prepared.names,
        request=request_key(opts, scanned, model.checkpoint_sha256),
        model_hash=hashes.model,
        decision=model.decision.config() if model.decision is not None else None,
        faithfulness=opts.faithfulness.key() if opts.faithfulness else None,
        faithfulness_hashes=hashes.faith,
        source=source,
        input_dir=os.path.abspath(opts.input_dir),
        label_hashes=hashes.labels or None,
        classes_from=prepared.classes_from,
    )
    return Setup(prepared.found, hashes, prepared.names, config.layer, config, prepared)


def settings_source(manifest: Manifest, request: str) -> tuple[RunConfig, str] | None:
    """The record and predict hash of the newest finished run with this request, as a run that loads no model records
    them: with the settings of the run that did load it (RunConfig.settings_of), not this run's device and batch
    size, which computed nothing. A record an older xaibatch made without loading its model is passed over for the
    one before it; when none loaded it, the newest is taken as recorded. None: no finished run with this request."""
    newest = None
    for run_id, config_json, predict_hash in manifest.finished_with(request):
        config = RunConfig.from_json(config_json)
        if config.loaded_model:
            return dataclasses.replace(config, settings_of=run_id), predict_hash
        if config.settings_of is not None:  # a run that loaded none either: the settings it names
            return config, predict_hash
        newest = newest or (config, predict_hash)
    return newest


def cached_setup(opts: RunOptions, out: Path, found: Scan) -> Setup | None:
    """The setup of the last finished run with this request, if the plan then has nothing to compute."""
    manifest_path = out / layout.MANIFEST
    if not manifest_path.is_file():
        return None
    try:
        key = request_key(opts, found, checkpoint_digest(checkpoint_path(opts)))
    except (OSError, XaibatchError):  # a missing checkpoint, --arch without one: the full path says so properly
        return None
    manifest = Manifest(manifest_path)
    try:
        last = settings_source(manifest, key)
        if last is None:
            return None
        config, predict_hash = last
        if found.classes is not None and config.class_names != found.classes:
            # the folder's classes in the model's order, as prepare() numbered them for the run that recorded this
            try:
                found = found.numbered_by(config.class_names)
            except InputError:
                return None
        hashes = Hashes(
            predict_hash,
            {m: v.hash for m, v in config.methods.items()},
            config.model.hashed(),
            config.faithfulness_hashes,
            config.model_hash or predict_hash,
            dict(config.label_hashes or {}),
            opts.max_map_side,
        )
        known = Known.read(manifest)
        on_disk = existing_files(out)
        plan = make_plan(found, known, hashes, on_disk.__contains__, on_disk=on_disk)
        if plan.work or plan.scored:
            return None
        if opts.faithfulness is not None and known.images:
            from ..evaluation import chance

            if chance.due(out, chance.key(opts.faithfulness.key(), predict_hash)):
                return None  # the chance line must be scored (an older xaibatch's, or deleted): the model loads
    except (KeyError, TypeError, ValueError, BadRecord):
        return None
    finally:
        manifest.close()
    # the record is the earlier run's but the input folder is this one's: the same images at another path (the
    # folder moved or renamed, then --replace; a symbolic link flipped) were recorded as where they no longer are
    config = dataclasses.replace(config, input_dir=os.path.abspath(opts.input_dir))
    return Setup(found, hashes, config.class_names, config.layer, config, known=known, plan=plan)
