"""Gallery pages anchored by content: which cards each page holds, kept from one write to the next.

Every card has a key in one total order, the gallery order itself (section, class, its sort key within the
group, its name: :func:`card_key`). A page is a contiguous range of keys, named by a stable id (its files:
``gallery/page-<id>.html``, ``detail/page-<id>.html`` and ``.js``). The ranges are saved with the report's state
(:class:`Paging`, in report-state.json) and a re-run puts each card into the page whose range holds its key, so
adding, removing or changing K images rewrites the pages that hold them, not every page after them. A page grown
past twice the page size splits (the first part keeps its id, the others take new ones); one shrunk below a quarter
of it merges into the page before it (the page after, for the first page), which keeps its id; an empty page goes
(the first page's id stays the first page's: every page's header links it). The id of a page merged away or emptied
is kept, with the first key its range had (:attr:`Paging.gone`): its files become a link on to the page that holds
that key now (render.moved_page), so a bookmark or a shared link to it finds the image (detail.js follows a card
that moved on from there), where it found no file.
With no saved ranges, another order definition (labeled or not, the page size, :data:`ORDER`) or a first
build: even pages of the page size, ids 1, 2, 3, ... (the files earlier versions wrote).

A page's id is not its place: the place ("page 3 of 40"), the totals and the pager are drawn in the browser from
``gallery/pages.js`` (render.pages_script), so a page's bytes depend on its own cards alone.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

ORDER = 1  # bump when card_key or the gallery's sort changes: every saved range is then dropped

SECTION_RANK = {"wrong": 0, "right": 1, "nolabel": 2, "pred": 0}  # cards.group_cards' sections, in gallery order

Key = tuple[int, int, float, str]


def card_key(section: str, class_index: int, confidence: float, rel: str) -> Key:
    """A card's place in gallery order (cards.group_cards: correct ones least confident first, others most)."""
    return (SECTION_RANK[section], class_index, confidence if section == "right" else -confidence, rel)


def order_definition(labeled: bool, page_size: int) -> str:
    """What the saved ranges are valid for."""
    return f"{ORDER}:{'labeled' if labeled else 'predicted'}:{page_size}"


@dataclass
class Paging:
    """The pages of the last write: (id, key of its first card) in gallery order, and the next id to give."""

    order: str
    pages: list[tuple[int, Key]]
    next_id: int
    # pages merged away or emptied: (id, the first key its range had), by id; their files link on (see above)
    gone: list[tuple[int, Key]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "pages": [[i, list(k)] for i, k in self.pages],
            "next": self.next_id,
            "gone": [[i, list(k)] for i, k in self.gone],
        }

    def holder(self, key: Key) -> int:
        """The id of the page whose range holds ``key`` (the first page's for a key before every range)."""
        starts = [k for _i, k in self.pages]
        return self.pages[max(0, bisect.bisect_right(starts, key) - 1)][0]

    def moved(self) -> list[tuple[int, int]]:
        """(id of a page gone, id of the page that holds its first key now), for the links on."""
        return [(gid, self.holder(k)) for gid, k in self.gone] if self.pages else []

    @classmethod
    def from_json(cls, saved: Any) -> Paging | None:
        """None when ``saved`` is not a Paging's JSON (absent, an older or damaged state; a state of before
        :attr:`gone` has none)."""
        try:
            pages, gone = _pairs(saved["pages"]), _pairs(saved.get("gone", []))
            if pages is None or gone is None:
                return None
            ids = [p[0] for p in pages] + [g[0] for g in gone]
            keys = [p[1] for p in pages]
            nxt = saved["next"]
            if (
                len(set(ids)) != len(ids)
                or keys != sorted(keys)
                or not isinstance(nxt, int)
                or nxt <= max(ids, default=0)
            ):
                return None
            return cls(str(saved["order"]), pages, nxt, gone)
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def _pairs(saved: Any) -> list[tuple[int, Key]] | None:
    """[[id, key], ...] as saved, checked; None when damaged."""
    out = []
    for pid, k in saved:
        s, c, conf, rel = k
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (pid, s, c)):
            return None
        if not isinstance(conf, (int, float)) or isinstance(conf, bool) or not isinstance(rel, str):
            return None
        out.append((pid, (s, c, float(conf), rel)))
    return out


def plan(keys: list[Key], saved: Paging | None, order: str, size: int) -> tuple[list[tuple[int, int, int]], Paging]:
    """The pages over ``keys`` (sorted: the gallery order) as (id, start, end) slices of it, and their Paging."""
    n = len(keys)
    if saved is None or saved.order != order or not saved.pages:
        ranges = [(i // size + 1, i, min(n, i + size)) for i in range(0, n, size)]
        next_id = len(ranges) + 1
    else:
        ranges, next_id = _anchored(keys, saved, size)
    if not ranges:  # no card: one empty page
        return [(1, 0, 0)], Paging(order, [], 2)
    gone: list[tuple[int, Key]] = []
    if saved is not None and saved.order == order and saved.pages:  # anchored: ids are never given twice
        now = {pid for pid, _a, _b in ranges}
        gone = sorted((pid, k) for pid, k in [*saved.gone, *saved.pages] if pid not in now)
    return ranges, Paging(order, [(pid, keys[a]) for pid, a, _b in ranges], next_id, gone)


def _anchored(keys: list[Key], saved: Paging, size: int) -> tuple[list[tuple[int, int, int]], int]:
    """Each key into the saved page whose range holds it; then empty pages go, small ones merge, big ones split."""
    pages: list[list[int]] = []  # [id, start, end]
    j = 0  # the saved page the current key is in (the first one's range starts at the lowest key)
    for i, k in enumerate(keys):
        while j + 1 < len(saved.pages) and k >= saved.pages[j + 1][1]:
            j += 1
        pid = saved.pages[j][0]
        if pages and pages[-1][0] == pid:
            pages[-1][2] = i + 1
        else:
            pages.append([pid, i, i + 1])
    if pages and pages[0][0] != saved.pages[0][0]:  # the first page emptied: the next one takes its id, which the
        pages[0][0] = saved.pages[0][0]  # summary's and every page's header link name (ReportData.gallery_first)
    smallest = max(1, size // 4)
    merged: list[list[int]] = []
    for p in pages:
        if merged and (p[2] - p[1] < smallest or merged[-1][2] - merged[-1][1] < smallest):
            merged[-1][2] = p[2]  # into the page before, which keeps its id (the first page's too)
        else:
            merged.append(p)
    next_id = saved.next_id
    out: list[tuple[int, int, int]] = []
    for pid, a, b in merged:
        if b - a <= 2 * size:
            out.append((pid, a, b))
            continue
        parts = math.ceil((b - a) / size)
        cuts = [a + (b - a) * q // parts for q in range(parts + 1)]
        for q in range(parts):
            out.append((pid if q == 0 else next_id, cuts[q], cuts[q + 1]))
            next_id += q > 0
    return out, next_id
