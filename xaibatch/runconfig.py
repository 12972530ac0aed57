"""What a run recorded about itself: one typed record, written by the run, read by the report and ``sanity``.

The run row's ``config_json`` is :meth:`RunConfig.to_dict`; :meth:`RunConfig.from_json` is the one reader.
:class:`ModelSource` holds the options that built the model and the methods, with paths made absolute, so
that ``xaibatch sanity`` rebuilds exactly the run's model from any folder. Records written before a field
existed read as ``None`` there; :meth:`RunConfig.rebuild_source` infers what it can from them, and
``xaibatch sanity`` says in one line what it cannot rebuild. Imports nothing heavy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from typing import Any

from .manifest import ManifestError, RunRecord
from .preprocess import Preprocess, channel_values

BUNDLED = "bundled"  # ModelSource.kind: the bundled demo checkpoint
KINDS = (BUNDLED, "checkpoint", "state_dict", "factory", "torchvision", "timm")


RANDOM_INIT = "(random init)"  # ModelRecord.checkpoint of a model built without weights (--model timm:NAME)
# What an older xaibatch recorded as the device of a run that found nothing to compute (its settings_of: None).
NOT_LOADED = "(model not loaded: nothing to compute)"


def _channels(name: str, values: Any) -> list[float] | None:
    return list(channel_values(name, values)) if values is not None else None


@dataclass(frozen=True)
class ModelSource:
    """The options the run's model was built from (RunOptions' names; paths absolute)."""

    kind: str  # one of KINDS
    checkpoint: str | None = None  # absolute path of --checkpoint; None: none given (bundled, or a factory's own)
    arch: str | None = None  # --arch (a plain state_dict's timm model)
    model: str | None = None  # --model, a FILE.py made absolute
    image_size: int | None = None  # --image-size as given
    mean: list[float] | None = None  # --mean, --std as given (three numbers each); None: not given
    std: list[float] | None = None
    classes: list[str] | None = None  # --classes
    positive_class: str | None = None
    threshold: float | None = None
    target_layer: str | None = None  # --target-layer as given (the layer chosen is RunConfig.layer)
    target: str = "pred"
    labeled: bool | None = None
    follow_links: bool = False
    max_map_side: int | None = None

    @classmethod
    def of(cls, opts: Any) -> ModelSource:
        """Record ``opts`` (a RunOptions) with every path absolute."""
        model = opts.model
        if model is not None:
            where, sep, fn = model.rpartition(":")
            if where.endswith(".py"):
                model = f"{os.path.abspath(where)}{sep}{fn}"
        if model is not None:
            kind = {"torchvision": "torchvision", "timm": "timm"}.get(model.partition(":")[0], "factory")
        elif opts.checkpoint is None:
            kind = BUNDLED
        else:
            kind = "state_dict" if opts.arch else "checkpoint"
        return cls(
            kind=kind,
            checkpoint=os.path.abspath(opts.checkpoint) if opts.checkpoint is not None else None,
            arch=opts.arch,
            model=model,
            image_size=opts.image_size,
            mean=_channels("mean", opts.mean),
            std=_channels("std", opts.std),
            classes=list(opts.classes) if opts.classes is not None else None,
            positive_class=opts.positive_class,
            threshold=opts.threshold,
            target_layer=opts.target_layer,
            target=opts.target,
            labeled=opts.labeled,
            follow_links=opts.follow_links,
            max_map_side=opts.max_map_side,
        )

    def describe(self) -> str:
        """How the run was given its model, as options (``--model /abs/net.py:build --checkpoint /abs/w.pth``)."""
        parts = [f"--model {self.model}"] if self.model else []
        parts += [f"--arch {self.arch}"] if self.arch else []
        parts += [f"--checkpoint {self.checkpoint}"] if self.checkpoint else []
        return " ".join(parts) or "the bundled model"


@dataclass(frozen=True)
class MethodRecord:
    title: str
    signed: bool
    config: dict[str, Any]  # what its maps' hash covers (shown in the report)
    hash: str
    options: dict[str, Any] | None = None  # what it was built with (create_method's options); None: older record
    superpixels: bool = False  # Method.superpixels (records before it: read as LEGACY_SUPERPIXELS)


# Records written before MethodRecord.superpixels: LIME's maps were then the only superpixel maps.
LEGACY_SUPERPIXELS = ("lime",)


@dataclass(frozen=True)
class ModelRecord:
    """The model as loaded: what the predictions' hash covers, and where its weights came from (None: unrecorded)."""

    arch: str | None = None
    checkpoint: str | None = None  # a path, "(random init)" or "(weights from SPEC)"
    checkpoint_sha256: str | None = None
    input_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    classes: list[str] | None = None
    target: str = "pred"
    map_format: int | None = None
    one_logit_positive: str | None = None
    one_logit_output: str | None = None  # "probability": the model's forward ends in its own sigmoid
    output: str | None = None  # "softmax": the model's forward ends in its own softmax
    code_sha256: str | None = None  # a --model factory's source file (model/formats.factory_code_sha256)

    @property
    def preprocess(self) -> Preprocess | None:
        """How the run's images became the model's input (``Preprocess.record``); None: not recorded."""
        return Preprocess.from_record(self)

    def hashed(self) -> dict[str, Any]:
        """The prediction hash's input (pipeline.plan.config_hashes), as recorded."""
        d = {
            "arch": self.arch,
            "checkpoint_sha256": self.checkpoint_sha256,
            "input_size": self.input_size,
            "mean": _list(self.mean),
            "std": _list(self.std),
            "classes": _list(self.classes),
            "target": self.target,
            "map_format": self.map_format,
        }
        if self.one_logit_positive is not None:
            d["one_logit_positive"] = self.one_logit_positive
        if self.one_logit_output is not None:
            d["one_logit_output"] = self.one_logit_output
        if self.output is not None:
            d["output"] = self.output
        if self.code_sha256 is not None:
            d["code_sha256"] = self.code_sha256
        return d


def _list(v):
    return list(v) if v is not None else None


@dataclass(frozen=True)
class RunConfig:
    """One run's configuration, as the run row records it (``config_json``)."""

    xaibatch: str
    torch: str
    device: str
    model: ModelRecord
    layer: str | None
    layer_grid: list[int] | None
    methods: dict[str, MethodRecord]
    batch_size: int | None
    workers: int | None
    seed: int
    engine: Any  # "local" or {"ray": RayOptions as a dict}
    labeled: bool
    class_names: list[str]
    request: str
    model_hash: str
    decision: dict[str, Any] | None = None  # heads.Decision.config()
    faithfulness: dict[str, Any] | None = None
    faithfulness_hashes: dict[str, str] | None = None
    source: ModelSource | None = None  # None: recorded by an xaibatch that did not record it
    input_dir: str | None = None  # absolute; None: older record (the run row's input_dir is as given)
    label_hashes: dict[str, str] | None = None  # --target pred,label: hash per true-class map key (plan.Hashes.labels)
    # A run that found nothing to compute loads no model: it records the settings of the newest finished run with the
    # same request that did (its device, batch size, workers, versions), and here that run's id. None: its own.
    settings_of: int | None = None
    # where class_names came from: "model", "option" (--classes), "folders" (sorted, the order assumed: the model
    # names none) or "numbered" (class_0, ...); None: older record
    classes_from: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # keys this version does not know

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "xaibatch": self.xaibatch,
            "torch": self.torch,
            "device": self.device,
            "model": {**self.model.hashed(), "checkpoint": self.model.checkpoint},
            "layer": self.layer,
            "layer_grid": self.layer_grid,
            "methods": {
                n: {
                    "title": m.title,
                    "signed": m.signed,
                    "config": m.config,
                    "hash": m.hash,
                    **({"options": m.options} if m.options is not None else {}),
                    **({"superpixels": True} if m.superpixels else {}),
                }
                for n, m in self.methods.items()
            },
            # the order of -m: to_json sorts the keys of "methods", and the report shows the methods in this order
            "method_order": list(self.methods),
            "batch_size": self.batch_size,
            "workers": self.workers,
            "seed": self.seed,
            "engine": self.engine,
            "labeled": self.labeled,
            "class_names": self.class_names,
            "request": self.request,
            "model_hash": self.model_hash,
            "decision": self.decision,
            "faithfulness": self.faithfulness,
            "faithfulness_hashes": self.faithfulness_hashes,
        }
        if self.source is not None:
            d["source"] = {k: v for k, v in vars(self.source).items()}
        if self.input_dir is not None:
            d["input_dir"] = self.input_dir
        if self.label_hashes:
            d["label_hashes"] = self.label_hashes
        if self.settings_of is not None:
            d["settings_of"] = self.settings_of
        if self.classes_from is not None:
            d["classes_from"] = self.classes_from
        return {**self.extra, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)  # sorted: Manifest.finished_with finds the request key

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Read a recorded configuration; a damaged one raises :class:`BadRecord` (a KeyError, TypeError...)."""
        try:
            m = d.get("model") or {}
            model = ModelRecord(**{k: m[k] for k in ModelRecord.__dataclass_fields__ if k in m})
            methods = {
                str(n): MethodRecord(
                    title=str(v.get("title", n)),
                    signed=bool(v.get("signed", False)),
                    config=dict(v.get("config") or {}),
                    hash=str(v.get("hash", "")),
                    options=dict(v["options"]) if v.get("options") is not None else None,
                    superpixels=bool(v.get("superpixels", str(n) in LEGACY_SUPERPIXELS)),
                )
                for n, v in (d.get("methods") or {}).items()
            }
            order = [str(n) for n in d.get("method_order") or [] if str(n) in methods]  # None: an older record
            methods = {n: methods[n] for n in dict.fromkeys(order + list(methods))}
            src = d.get("source")
            source = (
                None
                if src is None
                else ModelSource(**{k: v for k, v in src.items() if k in ModelSource.__dataclass_fields__})
            )
            if source is not None:  # as given to a run; a damaged value raises ValueError (sanity rebuilds from it)
                source = replace(source, mean=_channels("mean", source.mean), std=_channels("std", source.std))
            known = (set(cls.__dataclass_fields__) - {"extra"}) | {"method_order"}
            return cls(
                xaibatch=str(d.get("xaibatch", "")),
                torch=str(d.get("torch", "")),
                device=str(d.get("device", "")),
                model=model,
                layer=d.get("layer"),
                layer_grid=d.get("layer_grid"),
                methods=methods,
                batch_size=d.get("batch_size"),
                workers=d.get("workers"),
                seed=int(d.get("seed", 0)),
                engine=d.get("engine", "local"),
                labeled=bool(d.get("labeled")),
                class_names=[str(c) for c in d.get("class_names") or model.classes or []],
                request=str(d.get("request", "")),
                model_hash=str(d.get("model_hash", "")),
                decision=d.get("decision"),
                faithfulness=d.get("faithfulness"),
                faithfulness_hashes=d.get("faithfulness_hashes"),
                source=source,
                input_dir=d.get("input_dir"),
                label_hashes=d.get("label_hashes"),
                settings_of=int(d["settings_of"]) if d.get("settings_of") is not None else None,
                classes_from=d.get("classes_from"),
                extra={k: v for k, v in d.items() if k not in known},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BadRecord(f"{type(e).__name__}: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        try:
            d = json.loads(text)
        except (TypeError, ValueError) as e:
            raise BadRecord(f"not JSON ({e})") from None
        if not isinstance(d, dict):
            raise BadRecord("not a JSON object")
        return cls.from_dict(d)

    @classmethod
    def empty(cls) -> RunConfig:
        """No run recorded yet."""
        return cls.from_dict({})

    def target_mode(self) -> str:
        """--target as given (``pred,label`` records ``pred`` as the prediction maps' target)."""
        return self.source.target if self.source is not None else self.model.target

    @property
    def loaded_model(self) -> bool:
        """Whether the run that recorded this loaded its model (it had something to compute)."""
        return self.settings_of is None and not self.device.endswith(NOT_LOADED)

    def method_options(self) -> dict[str, dict[str, Any]]:
        """Each method's options as it was built; older records: its recorded config, less what is not an option."""
        from .methods.base import method_class, option_names

        out = {}
        for name, rec in self.methods.items():
            if rec.options is not None:
                out[name] = dict(rec.options)
                continue
            allowed = option_names(method_class(name))
            out[name] = {k: v for k, v in rec.config.items() if k in allowed}
        return out

    def rebuild_source(self) -> ModelSource:
        """The model's source: as recorded, or inferred from an older record's arch and checkpoint."""
        if self.source is not None:
            return self.source
        arch, ck = self.model.arch or "", self.model.checkpoint or ""
        real = ck not in ("", RANDOM_INIT) and not ck.startswith("(weights from")
        if ":" in arch:  # --model SPEC (its arch is the spec)
            kind = {"torchvision": "torchvision", "timm": "timm"}.get(arch.partition(":")[0], "factory")
            return ModelSource(
                kind, checkpoint=ck if real else None, model=arch, target=self.model.target, labeled=self.labeled
            )
        if not real:  # timm:NAME without weights
            return ModelSource("timm", model=f"timm:{arch}", target=self.model.target, labeled=self.labeled)
        # an xaibatch checkpoint names its arch; a plain state_dict needs it: passing it fits both
        return ModelSource("checkpoint", checkpoint=ck, arch=arch, target=self.model.target, labeled=self.labeled)


class BadRecord(ManifestError):
    """A run row's configuration that cannot be read."""

    def __init__(self, why: str) -> None:
        super().__init__(f"the manifest's record of the run is damaged ({why}); run `xaibatch run` again")


def read_run(row: RunRecord) -> RunConfig:
    """The configuration of a run row from Manifest.runs()."""
    return RunConfig.from_json(row.config_json)
