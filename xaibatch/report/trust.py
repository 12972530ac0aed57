"""The report's "Can I trust these maps?" data: faithfulness summaries, chance line, sanity results.

Plain data from the manifest's scores, ``faithfulness-chance.json`` and
``sanity.json``; :mod:`xaibatch.report` renders it, :mod:`xaibatch.report.figures` draws it.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean, variance

from ..evaluation import chance as chance_file
from ..evaluation.sanity_file import SanityCurve, SanityResult
from .text import fmt_time

CURVE_W, CURVE_H = 120, 60  # the detail page's curve thumbnails, in CSS pixels


@dataclass
class FaithRow:
    method: str
    title: str
    cells: list[tuple[str, int, float | None, float | None]]  # (subset, images, mean deletion, mean insertion)


@dataclass
class Verdict:
    text: str
    good: bool | None  # True: better than chance on both scores; False: on neither; None: mixed


@dataclass
class Trust:
    faith: list[FaithRow] = field(default_factory=list)
    chance: list[tuple[str, int, float, float]] = field(default_factory=list)  # (map, images, deletion, insertion)
    chance_settings: str = ""
    chance_note: str = ""  # how the chance rows' images were chosen, and how the verdicts compare with them
    verdicts: list[Verdict] = field(default_factory=list)  # per method: its scores against the chance line
    fill_note: str = ""  # set when the fill barely moves the model's output: the scores cannot tell maps apart
    sanity: SanityResult | None = None  # sanity.json (None: none, or unreadable); its curves' earlier and stale set
    sanity_stale: bool = False  # checked with another checkpoint; a curve's own "stale": its maps were recomputed since


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def build_trust(
    out: Path,
    images: dict,
    maps: dict,
    methods: list,
    labeled: bool,
    checkpoint_sha: str | None,
    faithfulness: dict | None = None,
    faith_hashes: dict | None = None,
) -> Trust:
    """Per method mean deletion/insertion for correct, misclassified and all images; the chance line; sanity.
    ``faithfulness``, ``faith_hashes``: the last run's settings and each of its methods' scores' hash (RunConfig),
    when it scored: then only the scores made under them count (a method it did not compute: its maps' scores under
    those settings), and the chance line only at its steps and fill (a run with new --faithfulness-steps stopped
    part way left scores of both settings, averaged into one table under the chance file's settings, and compared
    with chance maps of the other ones)."""
    t = Trust()
    scores: dict[str, dict[str, tuple[float, float]]] = {}  # method title -> rel -> (deletion, insertion)
    other: set[tuple[str, str]] = set()  # (rel, method) scored under other settings than the last run's: left out
    for m in methods:
        rows = [
            (images[rel], row)
            for (rel, name), row in maps.items()
            if name == m.name and row.deletion is not None and rel in images
        ]
        if faithfulness is not None and faith_hashes is not None:
            # a method the last run did not compute (its maps still shown): the scores of its own maps under the
            # last run's settings (dropped, they waited for a run that would never score them: none asks for it)
            want = faith_hashes.get(m.name)
            of = {h: want or chance_file.scores_hash(h, faithfulness) for h in {r.config_hash for _i, r in rows}}
            kept = [(i, r) for i, r in rows if r.faith_hash is not None and r.faith_hash == of[r.config_hash]]
            other |= {(i.rel, m.name) for i, r in rows} - {(i.rel, m.name) for i, r in kept}
            rows = kept
        if not rows:
            continue
        scores[m.title] = {i.rel: (r.deletion, r.insertion) for i, r in rows}
        subsets = [("all", rows)]
        if labeled:
            subsets += [
                ("correct", [(i, r) for i, r in rows if i.label is not None and i.label == i.pred]),
                ("misclassified", [(i, r) for i, r in rows if i.label is not None and i.label != i.pred]),
            ]
        t.faith.append(
            FaithRow(
                m.name,
                m.title,
                [
                    (s, len(rs), _mean([r.deletion for _i, r in rs]), _mean([r.insertion for _i, r in rs]))
                    for s, rs in subsets
                ],
            )
        )
    t.fill_note = fill_note(
        [row.faith for key, row in maps.items() if row.deletion is not None and row.rel in images and key not in other]
    )
    chance = chance_file.read(out)
    if faithfulness is not None and faith_hashes is not None and chance is not None:
        same = chance_file.settings_key(chance.steps, chance.baseline) == faithfulness
        chance = chance if same else None  # the chance maps' scores of other settings: no line to compare with
    if (t.faith or other) and faithfulness is not None and faith_hashes is not None:
        # with no score left (a run with new settings stopped before it scored any map) the page says why
        t.chance_settings = f"{faithfulness.get('steps')} steps, {faithfulness.get('baseline')} fill"
        if other:
            t.chance_settings += (
                f" (the last run's settings; {len(other):,} map scores made under other settings are left out until a "
                "run scores them again)"
            )
    if t.faith and chance is not None:
        t.chance_settings = t.chance_settings or f"{chance.steps} steps, {chance.baseline} fill"
        if chance.legacy is None:
            _sampled_chance(t, chance, images, scores)
        elif chance.legacy:
            _legacy_chance(t, chance.legacy, scores)
    if t.fill_note:
        _flag_flat_fill(t)
    t.sanity = SanityResult.read(out)  # a curve without what the page reads: the section is left out
    if t.sanity is not None:
        t.sanity_stale = bool(checkpoint_sha) and t.sanity.checkpoint_sha256 != checkpoint_sha
        for c in t.sanity.curves:
            c.earlier = earlier_words(c, t.sanity)
        _mark_recomputed(t.sanity.curves, maps, t.sanity_stale)
        _flag_insane(t, {m.name: m.title for m in methods})
    return t


def _flag_insane(t: Trust, titles: dict[str, str]) -> None:
    """A faithfulness verdict of a method whose maps fail the sanity check (of this checkpoint, on these maps) says
    so and is not shown as good: Guided Backprop's maps beat both chance maps on the demo data, in green, above a
    sanity check that finds they keep 0.71 rank correlation on a random network (they show the image's edges, which
    deletion rewards whatever the model). Only the two together are the finding."""
    if t.sanity_stale:
        return
    failed = {titles.get(c.method, c.method) for c in t.sanity.curves if not c.passed and not c.stale}
    for k, v in enumerate(t.verdicts):
        title = next((f for f in failed if v.text.startswith(f + ": ")), None)
        if title is not None:
            t.verdicts[k] = Verdict(
                f"{v.text}; but its maps fail the sanity check below, so these scores do not show that they explain "
                "the model",
                None if v.good else v.good,
            )


def _flag_flat_fill(t: Trust) -> None:
    """A good faithfulness verdict under a fill that barely moves the model's output says so and is not shown as
    good: on a random-weights ResNet the blur fill moved the class probability by 0.002, and IntegratedGradients
    "beat both chance maps" in green by +0.003 of AUC, below a note that these scores cannot tell maps apart."""
    for k, v in enumerate(t.verdicts):
        if v.good:
            t.verdicts[k] = Verdict(
                f"{v.text}; but the fill barely changes the model's output (above), so a gain this small does not "
                "show that the maps explain it",
                None,
            )


FLAT_FILL = 0.1  # the mean |P(image) - P(fill)| under which the page says the fill does not remove the evidence


def fill_note(curves: list[dict | None]) -> str:
    """What the page says when the fill barely changes the explained class's probability (each image's deletion
    curve starts at the image's and ends at the fill's): both curves then stay flat whatever the map, and a method
    "not better than chance" says nothing about its maps. On 120 demo images the blur fill moved it by 0.026 on
    average, the mean fill by 0.50."""
    ends = []
    for c in curves:
        d = (c or {}).get("deletion_curve")
        if isinstance(d, list) and len(d) >= 2 and all(isinstance(v, (int, float)) for v in (d[0], d[-1])):
            ends.append(abs(d[0] - d[-1]))
    if not ends:
        return ""
    moved = fmean(ends)
    if moved >= FLAT_FILL:
        return ""
    return (
        f"The fill barely changes the model's output: the explained class's probability moves by {moved:.3f} on "
        f"average from the image to the fill (under {FLAT_FILL}), so both curves stay nearly flat whatever the map and "
        "these scores cannot tell maps apart: try a fill that removes the evidence (--faithfulness-baseline mean "
        "or zero)."
    )


def earlier_words(c: SanityCurve, result: SanityResult) -> str | None:
    """When a curve kept from an earlier check (sanity.earlier_curves) was checked, in words; None: this check's."""
    return fmt_time(c.checked) if c.checked is not None and c.checked != result.created else None


def _mark_recomputed(curves: list[SanityCurve], maps: dict, whole: bool) -> None:
    """Mark the sanity curves whose method's maps no longer carry the hash they were checked with ("stale"): a
    method option, the input size or the layer changed since (same checkpoint), or its maps are gone. A curve of an
    older xaibatch names no hash: only the checkpoint tells. ``whole``: another checkpoint, which the check as a
    whole says, no curve on its own."""
    hashes: dict[str, set[str]] = {}
    for (_rel, name), row in maps.items():
        hashes.setdefault(name, set()).add(row.config_hash)
    for c in curves:
        c.stale = not whole and c.hash is not None and c.hash not in hashes.get(c.method, ())


CHANCE_WORDS = {"random": "random map", "blob": "centred blob"}


def _sampled_chance(t: Trust, chance: chance_file.ChanceFile, images: dict, scores: dict) -> None:
    """The chance rows over the sampled images the report shows (same content and target class as scored, by the
    model that predicted the image: a run with another model stopped before it scored the chance line left the
    previous model's scores, which were compared with the new model's maps), and each method's verdict against
    them on the same images."""
    # predict hash -> whether the chance scores are its model's (a handful of models: one hash each)
    models = {h: chance_file.scored_by(chance, h) for h in {row.predict_hash for row in images.values()}}
    sample = {
        rel: s.scores
        for rel, s in chance.images.items()
        if (row := images.get(rel)) is not None
        and row.sha256 == s.sha256
        and row.target == s.target
        and models[row.predict_hash]
    }
    if not sample:
        return
    for name, words in CHANCE_WORDS.items():
        d, i = zip(*(s[name] for s in sample.values()))
        t.chance.append((words, len(sample), fmean(d), fmean(i)))
    t.chance_note = (
        f"The chance rows score a random map and a centred blob on {len(sample):,} images drawn by their content's "
        "hash, whatever their names or folders; each verdict compares a method's scores with theirs image by "
        "image, on the same images."
    )
    t.verdicts = [paired_verdict(title, per_image, sample) for title, per_image in scores.items()]
    for f in t.faith:  # the method's means on the chance rows' images: the table's rows above are over all images
        on = [scores[f.title][rel] for rel in sample if rel in scores.get(f.title, {})]
        if on and len(on) < len(scores.get(f.title, {})):  # a sample of every image: its "(all)" row already
            f.cells.append((SAME_IMAGES, len(on), fmean(d for d, _i in on), fmean(i for _d, i in on)))


SAME_IMAGES = "the chance rows' images"  # the subset of a method's table row that the chance rows are scored on


def _legacy_chance(t: Trust, legacy: dict[str, dict[str, list[float]]], scores: dict) -> None:
    """An older xaibatch's chance lists (the run's first images in path order): shown, compared unpaired."""
    for name, words in CHANCE_WORDS.items():
        d = legacy.get(name)
        if d:
            t.chance.append((words, len(d["deletion"]), fmean(d["deletion"]), fmean(d["insertion"])))
    t.chance_note = (
        "The chance rows were scored by an older xaibatch on the run's first images in path order, which may not "
        "be like the others (one class folder); the next run with --faithfulness scores them on a sample."
    )
    t.verdicts = [
        faith_verdict(title, [d for d, _i in per_image.values()], [i for _d, i in per_image.values()], legacy)
        for title, per_image in scores.items()
    ]


def paired_verdict(
    title: str, scores: dict[str, tuple[float, float]], chance: dict[str, dict[str, tuple[float, float]]]
) -> Verdict:
    """A method's per-image (deletion, insertion) against each chance map's on the same images (``chance``: rel ->
    map -> (deletion, insertion)), the images both have. A score counts as better only when it beats every chance
    map by more than two standard errors of the mean paired difference: 0.963 against 0.966 is not a finding. The
    text gives each mean gain with its two standard errors and, when the method beats one chance map and not the
    other, names them: "not better than a chance map" read as "no better than random" where it beat the random
    map by four standard errors and only the centred blob matched it."""
    common = [rel for rel in chance if rel in scores]
    names = [n for n in CHANCE_WORDS if any(n in chance[rel] for rel in common)]
    gains = {
        name: (
            [chance[r][name][0] - scores[r][0] for r in common],
            [scores[r][1] - chance[r][name][1] for r in common],
        )
        for name in names
    }
    d_ok = bool(names) and all(_paired_better(d) for d, _i in gains.values())
    i_ok = bool(names) and all(_paired_better(i) for _d, i in gains.values())
    how = f" (image by image, on the {len(common):,} sampled images"
    if len(common) >= 2:
        how += "; mean gain ± two standard errors, " + "; ".join(
            f"over the {CHANCE_WORDS[n]}: deletion {_gain(d)}, insertion {_gain(i)}" for n, (d, i) in gains.items()
        )
    beaten = [n for n, (d, i) in gains.items() if _paired_better(d) or _paired_better(i)]
    if not d_ok and not i_ok and beaten:
        short = [n for n in names if n not in beaten]
        beats = " and ".join(
            f"the {CHANCE_WORDS[n]} on "
            + " and ".join(s for s, g in zip(("deletion", "insertion"), gains[n]) if _paired_better(g))
            for n in beaten
        )
        if short:
            text = (
                f"{title}: not clearly better than the {' or the '.join(CHANCE_WORDS[n] for n in short)} on either "
                f"score, though better than {beats}"
            )
        else:  # each score beats one chance map and not the other
            text = f"{title}: not better than both chance maps on either score, though better than {beats}"
        return Verdict(text + how + ")", False)
    return _verdict(title, d_ok, i_ok, how + ")")


def _gain(diffs: list[float]) -> str:
    """A mean paired difference with two standard errors, e.g. "+0.141 ± 0.070"; three decimals, more where the
    standard errors would round to 0.000: "+0.00186 ± 0.00032" (a gain "better than chance" read "+0.002 ± 0.000",
    and one of "+0.000 ± 0.000", numbers that show neither the gain nor its spread)."""
    se = 2 * (variance(diffs) / len(diffs)) ** 0.5
    places = 3 if se >= 0.0005 or se == 0 else min(9, 1 - math.floor(math.log10(se)))
    mean = round(fmean(diffs), places) + 0.0  # a mean that rounds to zero is "+0.000", never "-0.000"
    return f"{mean:+.{places}f} ± {se:.{places}f}"


def faith_verdict(
    title: str, deletion: list[float], insertion: list[float], chance: dict[str, dict[str, list[float]]]
) -> Verdict:
    """A method's scores against an older xaibatch's chance lists, which name no images (so unpaired): the better
    chance map on each score (lowest mean deletion, highest mean insertion); a score counts as better only when
    the difference of the means exceeds two standard errors."""
    d_ok = _clearly_better(deletion, min((c["deletion"] for c in chance.values()), key=fmean), lower=True)
    i_ok = _clearly_better(insertion, max((c["insertion"] for c in chance.values()), key=fmean), lower=False)
    return _verdict(title, d_ok, i_ok)


def _verdict(title: str, d_ok: bool, i_ok: bool, how: str = "") -> Verdict:
    if d_ok and i_ok:
        return Verdict(f"{title}: better than both chance maps on deletion and insertion{how}", True)
    if not d_ok and not i_ok:
        return Verdict(
            f"{title}: not clearly better than a chance map on either score (the differences are within two "
            f"standard errors, or the other way){how}",
            False,
        )
    better, other = ("deletion", "insertion") if d_ok else ("insertion", "deletion")
    return Verdict(f"{title}: clearly better than chance on {better}, not on {other}{how}", None)


def _paired_better(diffs: list[float]) -> bool:
    """Whether the mean of paired differences (positive: the method better) exceeds two standard errors."""
    if len(diffs) < 2:
        return False
    return fmean(diffs) > 2 * (variance(diffs) / len(diffs)) ** 0.5


def _clearly_better(xs: list[float], ref: list[float], lower: bool) -> bool:
    """Whether ``xs``'s mean beats ``ref``'s (lower or higher) by more than two standard errors of the difference."""
    if len(xs) < 2 or len(ref) < 2:
        return False
    diff = fmean(ref) - fmean(xs) if lower else fmean(xs) - fmean(ref)
    return diff > 2 * (variance(xs) / len(xs) + variance(ref) / len(ref)) ** 0.5


def curve_points(curve: list[float]) -> str:
    """An SVG polyline's points for a probability curve over [0, 1] in a CURVE_W x CURVE_H box."""
    n = max(1, len(curve) - 1)
    return " ".join(f"{CURVE_W * i / n:.1f},{CURVE_H * (1 - max(0.0, min(1.0, v))):.1f}" for i, v in enumerate(curve))
