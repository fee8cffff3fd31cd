"""Pages and a relevance cut-off (issue 30, item 2): `offset` and `min_score` on every query kind, alike through the
Python API, the command line and HTTP, on FAISS (flat and IVF-PQ) and Milvus Lite; pages stable while the index is
unchanged, and a page of a changed index refused by its generation."""

import json
import shutil

import numpy as np
import pytest

import dualtower
from dualtower.cli import main
from dualtower.errors import UserError
from dualtower.search import SearchIndex, build_index

from .test_search import QUERIES, _Server, digits, trained  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def index_folder(trained, digits, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("pages") / "index"
    build_index(str(digits), dualtower.load(trained), out, workers=0)
    return out


def _keys(hits) -> list[str]:
    return [h.key for h in hits]


def test_pages_put_together_are_one_deep_query_for_every_kind(trained, index_folder):  # noqa: F811
    index = SearchIndex(index_folder, model=dualtower.load(trained))
    try:
        first = index.search_text(QUERIES["three"], 1)[0]
        queries = {"text": (index.search_text, QUERIES["three"]), "id": (index.search_item, first.id),
                   "embedding": (index.search_vector, index.embed_text(QUERIES["seven"])),
                   "image": (index.search_image, dualtower.images.open_image(first.path))}
        for kind, (search, value) in queries.items():
            deep = search(value, 60)
            pages = [h for offset in range(0, 60, 15) for h in search(value, 15, offset=offset)]
            assert _keys(pages) == _keys(deep), kind
            assert [h.score for h in pages] == [h.score for h in deep], kind
            cut = deep[20].score
            kept = search(value, 60, min_score=cut)
            assert _keys(kept) == [h.key for h in deep if h.score >= cut] and len(kept) >= 21, kind
            assert search(value, 10, offset=len(index)) == [], kind  # past the end: an empty page
            assert all(h.score >= 0.5 for h in search(value, 30, min_score=0.5)), kind
        for bad, match in (({"offset": -1}, "offset must be an integer of at least 0"),
                           ({"offset": 2.5}, "offset must be"), ({"offset": True}, "offset must be"),
                           ({"min_score": 1.5}, "min_score must be a number between -1 and 1"),
                           ({"min_score": float("nan")}, "min_score must be"), ({"min_score": "0.5"}, "min_score")):
            with pytest.raises(UserError, match=match):
                index.search_text(QUERIES["zero"], 5, **bad)
    finally:
        index.close()


def test_the_command_line_pages_as_the_api_does(trained, index_folder, capsys):  # noqa: F811
    index = SearchIndex(index_folder, model=dualtower.load(trained))
    try:
        api = index.search_text(QUERIES["five"], 8, offset=8, min_score=0.0)
    finally:
        index.close()
    assert main(["search", str(index_folder), QUERIES["five"], "-k", "8", "--offset", "8", "--min-score", "0",
                 "--json", "--model", str(trained)]) == 0, capsys.readouterr().err
    assert [h["key"] for h in json.loads(capsys.readouterr().out)] == _keys(api)
    for flag, value, message in (("--offset", "-3", "--offset: -3 is not in [0, ...]"),
                                 ("--min-score", "2", "--min-score: 2 is not between -1 and 1"),
                                 ("--min-score", "nan", "--min-score: nan is not between -1 and 1")):
        with pytest.raises(SystemExit):
            main(["search", str(index_folder), "zero", flag, value])
        assert message in capsys.readouterr().err


def test_http_pages_say_where_the_next_one_starts_and_refuse_a_changed_index(trained, digits, tmp_path):  # noqa: F811
    folder = tmp_path / "images"
    for name in ("three", "seven"):
        shutil.copytree(digits / name, folder / name)
    model = dualtower.load(trained)
    build_index(str(folder), model, tmp_path / "index", workers=0)
    index = SearchIndex(tmp_path / "index", model=model)
    server = _Server(index)
    try:
        deep = _keys(index.search_text(QUERIES["three"], 40))
        got, body, offset = [], {"text": QUERIES["three"], "k": 16}, 0
        status, reply = server.search(body)
        generation = reply["generation"]
        while offset is not None and len(got) < 40:
            status, reply = server.search({**body, "offset": offset, "generation": generation})
            assert status == 200 and reply["offset"] == offset and reply["generation"] == generation
            got += [r["key"] for r in reply["results"]]
            offset = reply["next_offset"]
        assert got[:40] == deep
        last = server.search({**body, "offset": len(index) - 5})[1]
        assert len(last["results"]) == 5 and last["next_offset"] is None  # the end of the ranking
        cut = index.search_text(QUERIES["three"], 40)[30].score
        status, reply = server.search({**body, "k": 40, "min_score": cut})
        assert [r["key"] for r in reply["results"]] == [h.key for h in index.search_text(QUERIES["three"], 40)
                                                          if h.score >= cut]
        assert reply["min_score"] == cut and reply["next_offset"] is None  # cut short: the last page
        seven = next((folder / "seven").iterdir())
        status, reply = server.upload(seven.name, seven.read_bytes(), k=5)  # an image upload pages too
        assert status == 200
        for bad, field in (({"offset": -1}, "offset"), ({"offset": "5"}, "offset"), ({"offset": 10**9}, "offset"),
                           ({"min_score": 2}, "min_score"), ({"min_score": "0.3"}, "min_score"),
                           ({"min_score": True}, "min_score"), ({"generation": "x"}, "generation"),
                           ({"page": 2}, "unknown fields")):
            status, reply = server.search({**body, **bad})
            assert status == 422 and field in reply["error"], (bad, reply)
        shutil.rmtree(folder / "seven")  # the index changes: an old generation's page is refused
        build_index(str(folder), model, tmp_path / "index", workers=0)
        status, reply = server.search({**body, "offset": 16, "generation": generation})
        assert status == 409 and "has changed since" in reply["error"]
        status, reply = server.search({**body, "offset": 16})
        assert status == 200 and reply["generation"] != generation
    finally:
        server.stop()
        index.close()


@pytest.mark.parametrize("engine", ["ivf", "milvus"])
def test_other_engines_cut_and_page_as_flat_does(trained, digits, tmp_path, engine):  # noqa: F811
    """IVF-PQ (with its exact re-rank) and Milvus Lite: the first page and the cut-off equal the flat engine's;
    Milvus pages put together equal its deep query (an approximate engine's deeper page draws its candidates
    afresh, so IVF-PQ is held only to the first page and the cut)."""
    if engine == "milvus":
        pytest.importorskip("milvus_lite", reason="the test setup installs milvus-lite")
    model = dualtower.load(trained)
    build_index(str(digits), model, tmp_path / "flat", workers=0, engine="flat")
    options = {"backend": "milvus"} if engine == "milvus" else {"engine": "ivf"}
    build_index(str(digits), model, tmp_path / engine, workers=0, **options)
    flat, other = SearchIndex(tmp_path / "flat", model=model), SearchIndex(tmp_path / engine, model=model)
    try:
        for text in QUERIES.values():
            reference = flat.search_text(text, 20)
            assert _keys(other.search_text(text, 10)) == _keys(reference)[:10]
            cut = reference[12].score
            assert _keys(other.search_text(text, 20, min_score=cut)) == [h.key for h in reference if h.score >= cut]
            if engine == "milvus":
                pages = [h for offset in (0, 5, 10, 15) for h in other.search_text(text, 5, offset=offset)]
                assert _keys(pages) == _keys(reference)
                assert np.allclose([h.score for h in pages], [h.score for h in reference], atol=1e-5)
    finally:
        flat.close()
        other.close()
