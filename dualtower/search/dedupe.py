"""Duplicates in an index: the same file content, and near-duplicates (the same picture re-encoded, resized,
slightly cropped, stripped of its metadata or in another format) told apart from pictures that are merely alike
(burst shots, neighbouring frames, a shifted view of the same scene), which an embedding alone cannot do: two
frames of a burst are as near in CLIP's space as a photo and its re-encoding (the false groups Immich's users
report). So a pair is a near-duplicate when its embeddings are near (a cheap gate, `min_cosine`) and its
perceptual hashes are too: at most `max_distance` bits of 64 differ between a DCT hash of the picture's structure,
which a re-encoding or a resize keeps and a shift of the view does not. Each image keeps three hashes, of its
thumbnail whole and with 3% and 6% cut from each side, and a pair's distance is the least of the nine
comparisons, so a slight crop matches too while a moved view does not. Pairs are grouped (a union of pairs),
each group with why and the scores of its pairs. The defaults are calibrated in benchmarks/dedupe.py
(RESULTS.md).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

MIN_COSINE = 0.90
MAX_DISTANCE = 2
NEIGHBOURS = 10
CROPS = (0.0, 0.03, 0.06)  # cut from each side before hashing
_DCT = np.cos(np.pi / 32 * (np.arange(32)[None, :] + 0.5) * np.arange(32)[:, None])  # DCT-II basis, 32 points


def phash(image) -> int:
    """A 64-bit perceptual hash: the picture in grey at 32x32, its 8x8 lowest DCT frequencies, each bit whether a
    frequency is above their median (the constant term left out)."""
    from PIL import Image

    grey = np.asarray(image.convert("L").resize((32, 32), Image.LANCZOS), dtype=np.float64)
    low = (_DCT @ grey @ _DCT.T)[:8, :8].ravel()
    return int.from_bytes(np.packbits(low > np.median(low[1:])).tobytes(), "big")  # the first bit the highest


def hashes(image) -> bytes:
    """The image's hashes (whole, and cut by each of CROPS), as the index keeps them: 8 bytes each."""
    image = image.convert("L")  # once for the three crops (phash converts per pixel, so crops commute with it)
    w, h = image.size
    return b"".join(phash(image.crop((round(w * c), round(h * c), w - round(w * c), h - round(h * c))))
                    .to_bytes(8, "little") for c in CROPS)


def distance(a: bytes, b: bytes) -> int:
    """The least number of differing bits between any hash of `a` and any of `b` (see `hashes`)."""
    ha = [int.from_bytes(a[i: i + 8], "little") for i in range(0, len(a), 8)]
    hb = [int.from_bytes(b[i: i + 8], "little") for i in range(0, len(b), 8)]
    return min(bin(x ^ y).count("1") for x in ha for y in hb)


@dataclass
class Group:
    reason: str  # "identical file content" or "near-duplicate"
    ids: list[int]
    pairs: list[dict] = field(default_factory=list)  # {"a", "b", "cosine", "hash_distance", "reason"}

    def to_dict(self, items: dict) -> dict:
        return {"reason": self.reason, "items": [{"id": i, "key": items[i].key, "path": items[i].path,
                                                  "width": items[i].width, "height": items[i].height}
                                                 for i in self.ids if i in items],
                "pairs": self.pairs}


def find(index, min_cosine: float = MIN_COSINE, max_distance: int = MAX_DISTANCE,
         neighbours: int = NEIGHBOURS) -> list[Group]:
    """The duplicate groups of `index` (a SearchIndex), largest first."""
    if not -1 <= min_cosine <= 1 or not 0 <= max_distance <= 64 or not 1 <= neighbours <= 1000:
        from ..errors import UserError

        raise UserError("min_cosine is in [-1, 1], max_distance in [0, 64] and neighbours in [1, 1000]")
    engine, row_to_id, _ = index.current()
    store = index.store
    pairs: dict[tuple[int, int], dict] = {}
    same = store.read(lambda db: db.execute("SELECT group_concat(id) FROM items WHERE sha256 IS NOT NULL "
                                            "GROUP BY sha256 HAVING count(*) > 1").fetchall())
    for (ids,) in same:
        first, *rest = sorted(int(i) for i in ids.split(","))
        for other in rest:
            pairs[(first, other)] = {"a": first, "b": other, "cosine": 1.0, "hash_distance": 0,
                                     "reason": "identical file content"}
    rows = np.flatnonzero(row_to_id >= 0)
    near = []
    for lo in range(0, len(rows), 1024):
        part = rows[lo: lo + 1024]
        scores, found = engine.search(np.asarray(engine.vectors[part], dtype=np.float32), neighbours + 1)
        for row, srow, frow in zip(part, scores, found):
            a = int(row_to_id[row])
            near += [(min(a, b), max(a, b), float(s)) for s, r in zip(srow, frow)
                     if r >= 0 and (b := int(row_to_id[r])) != a and b >= 0 and s >= min_cosine]
    hashes = _hashes(store, sorted({i for a, b, _ in near for i in (a, b)}))
    for a, b, cosine in near:
        if (a, b) in pairs or a not in hashes or b not in hashes:
            continue
        d = distance(hashes[a], hashes[b])
        if d <= max_distance:
            pairs[(a, b)] = {"a": a, "b": b, "cosine": round(cosine, 5), "hash_distance": d,
                             "reason": "near-duplicate"}
    return _groups(list(pairs.values()))


def _hashes(store, ids: list[int]) -> dict[int, bytes]:
    """id -> perceptual hash, from the index (computed from the stored thumbnail where an older index has none)."""
    from PIL import Image

    kept = store.read(lambda db: "phash" in {row[1] for row in db.execute("PRAGMA table_info(items)")})
    column = "phash" if kept else "NULL"  # an index from before dedupe: every hash from the thumbnails
    out = {}
    for lo in range(0, len(ids), 900):
        chunk = ids[lo: lo + 900]
        marks = ",".join("?" * len(chunk))
        rows = store.read(lambda db: db.execute(f"SELECT id, {column}, thumb FROM items WHERE id IN ({marks})",
                                                chunk).fetchall())
        for item_id, value, thumb in rows:
            if value is None and thumb:
                with Image.open(io.BytesIO(thumb)) as image:
                    value = hashes(image)
            if value is not None:
                out[item_id] = value
    return out


def _groups(pairs: list[dict]) -> list[Group]:
    parent: dict[int, int] = {}

    def root(i: int) -> int:
        while parent.setdefault(i, i) != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for p in pairs:
        parent[root(p["a"])] = root(p["b"])
    members: dict[int, list[int]] = {}
    for i in list(parent):
        members.setdefault(root(i), []).append(i)
    inside: dict[int, list[dict]] = {}
    for p in pairs:
        inside.setdefault(root(p["a"]), []).append(p)
    groups = []
    for top, ids in members.items():
        own = sorted(inside[top], key=lambda p: (p["a"], p["b"]))
        exact = all(p["reason"] == "identical file content" for p in own)
        groups.append(Group("identical file content" if exact else "near-duplicate", sorted(ids), own))
    return sorted(groups, key=lambda g: (-len(g.ids), g.ids[0]))
