"""Metadata and filters (issue 30, item 1): what an index keeps of each image (folder, extension, size, time,
pixels, caption, and a list's other columns or an image's JSON sidecar), and conditions on it applied inside the
engine; filtered results equal an exact filtered scan at 1%, 10% and 90% selectivity on FAISS flat, IVF-PQ and
Milvus Lite, by pre-filtering and by the engine's own selector; alike through the API, the command line and
HTTP; edited fields take effect without embedding again; bad filters refused with the condition named."""

import json

import numpy as np
import pytest

import dualtower
from dualtower.cli import main
from dualtower.search import SearchIndex, Store, build_index
from dualtower.search import query as search_query
from dualtower.search.filters import FilterError

from .test_search import QUERIES, _Server, digits, trained  # noqa: F401 (fixtures)


def _rows(digits_folder) -> list[dict]:  # noqa: F811
    """One JSON-lines row per held-out digit: its image, a caption, and fields a filter can pick 1%, 10% or 90%
    of (`bucket` 0-99), a text field, a numeric text field as CSV gives them, and tags."""
    images = sorted(p.relative_to(digits_folder).as_posix() for p in digits_folder.rglob("*.png"))
    return [{"image": name, "caption": f"a handwritten {name.split('/')[0]}", "bucket": i % 100,
             "camera": ["X100", "A7", "Q2"][i % 3], "stars": str(i % 5), "tags": ["odd"] if i % 2 else ["even", "x"]}
            for i, name in enumerate(images)]


@pytest.fixture(scope="module")
def listed(digits, tmp_path_factory):  # noqa: F811
    rows = _rows(digits)
    (digits / "list.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return digits / "list.jsonl", rows


@pytest.fixture(scope="module")
def indexes(trained, listed, tmp_path_factory):  # noqa: F811
    model = dualtower.load(trained)
    root = tmp_path_factory.mktemp("filtered")
    out = {}
    for name, options in (("flat", {"engine": "flat"}), ("ivf", {"engine": "ivf"}), ("milvus", {"backend": "milvus"})):
        if name == "milvus":
            pytest.importorskip("milvus_lite", reason="the test setup installs milvus-lite")
        build_index(str(listed[0]), model, root / name, workers=0, **options)
        out[name] = root / name
    return model, out


def _exact(index: SearchIndex, vector: np.ndarray, keep, k: int) -> list[str]:
    """The exact filtered scan: every stored vector scored, those whose record `keep` accepts, best first."""
    store = index.store
    rows, ids = store.live_rows()
    items = store.items(ids.tolist())
    scores = np.asarray(store.vectors()[rows], dtype=np.float32) @ (vector / np.linalg.norm(vector))
    ranked = sorted(((float(s), items[i].key) for s, i in zip(scores, ids) if keep(items[i].key)),
                    key=lambda t: -t[0])
    return [key for _, key in ranked[:k]]


SELECTIVITY = {"1%": ("bucket<1", lambda r: r["bucket"] < 1), "10%": ("bucket<10", lambda r: r["bucket"] < 10),
               "90%": ("bucket<90", lambda r: r["bucket"] < 90)}


@pytest.mark.parametrize("path", ["prefilter", "engine"])
@pytest.mark.parametrize("engine", ["flat", "ivf", "milvus"])
def test_filtered_results_equal_an_exact_filtered_scan(indexes, listed, engine, path, monkeypatch):
    """At 1%, 10% and 90% of the items, combined with a second condition, through the pre-filter scan and
    through the engine's own filter (FAISS id selector, Milvus scalar filter on the row): the hits are the
    exact scan's (IVF-PQ with its exact re-rank reaches every candidate at this size)."""
    if path == "engine":
        monkeypatch.setattr(search_query, "PREFILTER_ROWS", 0)
        monkeypatch.setattr(search_query, "FLAT_SCAN_SHARE", 0.0)
    model, folders = indexes
    rows = {r["image"]: r for r in listed[1]}
    index = SearchIndex(folders[engine], model=model)
    try:
        for share, (condition, keep) in SELECTIVITY.items():
            for extra, also in (((), lambda r: True), (("camera=X100",), lambda r: r["camera"] == "X100")):
                where = [condition, *extra]
                matching = sum(keep(r) and also(r) for r in rows.values())
                assert index.matching(where) == matching, where
                for text in (QUERIES["three"], QUERIES["seven"]):
                    vector = index.embed_text(text)
                    expected = _exact(index, vector, lambda key: keep(rows[key]) and also(rows[key]), 10)
                    hits = index.search_text(text, 10, where=where)
                    assert [h.key for h in hits] == expected, (engine, path, where, text)
                    assert all(keep(rows[h.key]) and also(rows[h.key]) for h in hits)
        nobody = index.search_text(QUERIES["three"], 10, where=["bucket>=99", "bucket<99.5", "camera=none"])
        assert nobody == []
    finally:
        index.close()


def test_every_field_kind_filters_as_its_meaning_says(indexes, listed, digits):  # noqa: F811
    model, folders = indexes
    rows = listed[1]
    index = SearchIndex(folders["flat"], model=model)
    try:
        n = len(rows)
        count = index.matching
        assert count(["folder=three"]) == sum(r["image"].startswith("three/") for r in rows)
        assert count(["folder!=three"]) == n - count(["folder=three"])
        assert count(["folder=t*"]) == sum(r["image"][0] == "t" for r in rows)
        assert count(["path=three/*"]) == count(["folder=three"]) and count(["path~/00"]) > 0
        assert count(["ext=png"]) == n and count(["ext=jpg,jpeg"]) == 0 and count(["ext=.PNG"]) == n
        assert count(["caption~HANDWRITTEN seven"]) == count(["folder=seven"])
        assert count(["caption=a handwritten zero"]) == count(["folder=zero"])
        assert count(["stars>=3"]) == sum(int(r["stars"]) >= 3 for r in rows)  # text digits compare as numbers
        assert count(["stars=3"]) == count(["stars=3.0"]) == sum(r["stars"] == "3" for r in rows)
        assert count(["tags=even"]) == sum("even" in r["tags"] for r in rows)  # a list: each value a match
        assert count(["tags~dd"]) == sum("odd" in r["tags"] for r in rows)
        assert count(["camera!=X100"]) == sum(r["camera"] != "X100" for r in rows)
        assert count(["width=8", "height=8"]) == n  # the digits are 8x8
        assert count(["width>8"]) == 0
        sizes = sorted((digits / r["image"]).stat().st_size for r in rows)
        assert count([f"size<={sizes[n // 2]}"]) == sum(s <= sizes[n // 2] for s in sizes)
        assert count(["size<1MB"]) == n and count(["size>=1KiB"]) == sum(s >= 1024 for s in sizes)
        assert count(["mtime>=2000-01-01"]) == n and count(["mtime<2000-01-01T00:00:00+02:00"]) == 0
        import datetime

        today = datetime.datetime.fromtimestamp((digits / rows[0]["image"]).stat().st_mtime,
                                                datetime.timezone.utc).date().isoformat()
        assert count([f"mtime={today}"]) >= 1 and count([f"mtime<={today}"]) == count([f"mtime<{today}"]) + \
            count([f"mtime={today}"])
    finally:
        index.close()


@pytest.mark.parametrize("where, message", [
    (["ratin>=3"], "'ratin' is not a field of this index"),
    (["camera>=3"], "camera holds no numbers"),
    (["size>=10", "size<5"], "size>=10 and size<5: no value of size"),
    (["bucket>5", "bucket<=5"], "no value of bucket"),
    (["ext<3"], "ext takes = or !=, not <"),
    (["bucket>=abc"], "bucket >= needs a number"),
    (["size<2XB"], "size takes bytes"),
    (["mtime>=yesterday"], "mtime takes an ISO date"),
    (["width~3"], "width is a number"),
    (["no operator"], "not FIELD OP VALUE"),
    ([""], "not FIELD OP VALUE"),
])
def test_bad_filters_are_refused_naming_the_condition(indexes, where, message):
    model, folders = indexes
    index = SearchIndex(folders["flat"], model=model)
    try:
        with pytest.raises(FilterError, match=message):
            index.search_text(QUERIES["three"], 5, where=where)
    finally:
        index.close()


def test_the_command_line_and_http_filter_as_the_api_does(indexes, trained, capsys):  # noqa: F811
    model, folders = indexes
    index = SearchIndex(folders["flat"], model=model)
    where = ["bucket<40", "camera!=A7"]
    server = _Server(index)
    try:
        api = [h.key for h in index.search_text(QUERIES["five"], 12, where=where)]
        assert len(api) == 12
        assert main(["search", str(folders["flat"]), QUERIES["five"], "-k", "12", "--json", "--model", str(trained),
                     *[f"--where={w}" for w in where]]) == 0, capsys.readouterr().err
        assert [h["key"] for h in json.loads(capsys.readouterr().out)] == api
        status, reply = server.search({"text": QUERIES["five"], "k": 12, "where": where})
        assert status == 200 and [r["key"] for r in reply["results"]] == api and reply["where"] == where
        status, reply = server.search({"text": QUERIES["five"], "k": 6, "offset": 6, "where": where})
        assert [r["key"] for r in reply["results"]] == api[6:]
        first = index.search_text(QUERIES["five"], 1, where=where)[0]
        status, reply = server.search({"id": first.id, "k": 5, "where": where})
        assert status == 200 and [r["key"] for r in reply["results"]] == \
            [h.key for h in index.search_item(first.id, 5, where=where)]
        photo = open(first.path, "rb").read()
        status, reply = server.upload("x.png", photo, k=5, where=where)
        assert status == 200 and all(r["key"] in {h.key for h in index.search_item(first.id, 400, where=where)}
                                     for r in reply["results"])
        for bad, field in ((["ratin=3"], "'ratin' is not a field"), ("ext=png", "where must be a list"),
                           ([3], "where must be a list"), (["size>=10", "size<5"], "no value of size"),
                           (["x" * 2000], "at most 1000 characters")):
            status, reply = server.search({"text": QUERIES["five"], "k": 5, "where": bad})
            assert status == 422 and field in reply["error"], (bad, reply)
        assert main(["search", str(folders["flat"]), "zero", "--where", "ratin=3", "--model", str(trained)]) == 2
        assert "'ratin' is not a field of this index" in capsys.readouterr().err
    finally:
        server.stop()
        index.close()


def test_edited_fields_and_sidecars_take_effect_without_embedding_again(trained, digits, tmp_path):  # noqa: F811
    """A folder of images with JSON sidecars (photo.json, or Takeout's photo.png.json); a list whose rows are
    edited. The next run embeds nothing and the filters see the new fields; a bad sidecar keeps its image."""
    import shutil

    model = dualtower.load(trained)
    folder = tmp_path / "photos"
    shutil.copytree(digits / "three", folder)
    images = sorted(folder.glob("*.png"))
    images[0].with_suffix(".json").write_text(json.dumps({"album": "trip", "people": ["ann", "bo"]}))
    (folder / (images[1].name + ".json")).write_text(json.dumps({"album": "trip", "exif": {"iso": 400}}))
    images[2].with_suffix(".json").write_text("{not json")
    report = build_index(str(folder), model, tmp_path / "index", workers=0)
    assert report.added == len(images) and sum(report.skipped.values()) == 0
    index = SearchIndex(tmp_path / "index", model=model)
    assert index.matching(["album=trip"]) == 2 and index.matching(["people=bo"]) == 1
    assert index.matching(["exif.iso>=100"]) == 1
    index.close()
    images[1].with_name(images[1].name + ".json").write_text(json.dumps({"album": "home"}))
    report = build_index(str(folder), model, tmp_path / "index", workers=0)
    assert report.added == report.changed == 0 and report.unchanged == len(images)
    index = SearchIndex(tmp_path / "index", model=model)
    try:
        assert index.matching(["album=trip"]) == 1 and index.matching(["album=home"]) == 1
        assert [h.key for h in index.search_text(QUERIES["three"], 3, where=["album=home"])] == [images[1].name]
    finally:
        index.close()


def test_a_parquet_list_and_an_index_from_before_filters(trained, listed, digits, tmp_path):  # noqa: F811
    pyarrow = pytest.importorskip("pyarrow", reason="the test extra installs pyarrow")
    import pyarrow.parquet as pq

    model = dualtower.load(trained)
    rows = listed[1][:40]
    pq.write_table(pyarrow.Table.from_pylist(rows), digits / "list.parquet")
    build_index(str(digits / "list.parquet"), model, tmp_path / "index", workers=0)
    index = SearchIndex(tmp_path / "index", model=model)
    try:
        assert index.matching(["bucket<10"]) == 10 and index.matching(["camera=Q2"]) == \
            sum(r["camera"] == "Q2" for r in rows)
    finally:
        index.close()
    # An index made before filters (no metadata columns) is refused with what to do, and its next run adds them.
    store = Store(tmp_path / "index", writable=True)
    store.db.executescript("DROP TRIGGER item_fields_gone; DROP TABLE item_fields; DROP INDEX items_folder; "
                           "DROP INDEX items_ext; ALTER TABLE items DROP COLUMN folder; "
                           "ALTER TABLE items DROP COLUMN ext; ALTER TABLE items DROP COLUMN fields; "
                           "ALTER TABLE items DROP COLUMN phash;")  # nor dedupe's perceptual hashes
    store.close()
    index = SearchIndex(tmp_path / "index", model=model)
    with pytest.raises(FilterError, match="built before filters; run `dualtower index`"):
        index.search_text(QUERIES["three"], 3, where=["ext=png"])
    from dualtower.search import dedupe

    from_thumbs = [g.ids for g in dedupe.find(index)]  # the hashes come from the stored thumbnails
    index.close()
    build_index(str(digits / "list.parquet"), model, tmp_path / "index", workers=0)
    index = SearchIndex(tmp_path / "index", model=model)
    try:
        first = rows[0]["image"].split("/")[0]
        assert index.matching(["ext=png"]) == 40
        assert index.matching([f"folder={first}"]) == sum(r["image"].startswith(first + "/") for r in rows)
        assert index.matching(["bucket<10"]) == 10  # the list's fields come back with the next run
        assert [g.ids for g in dedupe.find(index)] == from_thumbs
    finally:
        index.close()
