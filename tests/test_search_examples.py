"""Queries made of examples (issue 30, item 3): more like these, less like those (texts, images, stored items and
embeddings, with weights; a text and an image together), alike through the API, the command line and HTTP
(JSON and a multipart form); the examples' own items are left out; pages and filters apply as to any query."""

import json
from collections import Counter

import numpy as np
import pytest

import dualtower
from dualtower.cli import main
from dualtower.errors import UserError
from dualtower.images import open_image
from dualtower.search import SearchIndex, build_index

from .test_search import QUERIES, _classes, _Server, digits, trained  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def index(trained, digits, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("examples") / "index"
    model = dualtower.load(trained)
    build_index(str(digits), model, out, workers=0)
    index = SearchIndex(out, model=model)
    yield index
    index.close()


def _unit(v):
    v = np.asarray(v, dtype=np.float32)
    return v / np.linalg.norm(v)


def _keys(hits):
    return [h.key for h in hits]


def test_the_query_is_the_weighted_sum_of_positives_minus_negatives(index, digits):  # noqa: F811
    sevens = [h for h in index.search_text(QUERIES["seven"], 40) if h.key.startswith("seven/")][:2]
    photo = open_image(digits / index.search_text(QUERIES["three"], 1)[0].key)
    positive = [{"id": sevens[0].id, "weight": 2.0}, {"id": sevens[1].id}, {"text": QUERIES["seven"], "weight": 0.5}]
    negative = [{"text": "the number one"}, {"image": photo, "weight": 0.3}]
    query = (2 * _unit(index.item_vector(sevens[0].id)) + _unit(index.item_vector(sevens[1].id))
             + 0.5 * _unit(index.embed_text(QUERIES["seven"])) - _unit(index.embed_text(negative[0]["text"]))
             - 0.3 * _unit(index.embed_image(photo)))
    expected = [h for h in index.search_vector(query, 12) if h.id not in {sevens[0].id, sevens[1].id}][:10]
    hits = index.search_examples(positive, negative, 10)
    assert _keys(hits) == _keys(expected)
    assert np.allclose([h.score for h in hits], [h.score for h in expected], atol=1e-6)
    assert not {sevens[0].id, sevens[1].id} & {h.id for h in hits}  # the examples themselves are left out
    assert Counter(_classes(_keys(hits)))["seven"] >= 8  # more like the sevens: sevens
    # one example alone is the plain query of its kind
    assert _keys(index.search_examples([{"text": QUERIES["three"]}], k=10)) == _keys(index.search_text(QUERIES["three"], 10))
    assert _keys(index.search_examples([{"image": photo}], k=5)) == _keys(index.search_image(photo, 5))
    # a text and an image together, pages and a filter
    both = [{"image": photo}, {"text": QUERIES["three"]}]
    deep = index.search_examples(both, [], 30, where=["folder!=eight"])
    pages = [h for offset in (0, 10, 20) for h in index.search_examples(both, [], 10, offset=offset,
                                                                          where=["folder!=eight"])]
    assert _keys(pages) == _keys(deep) and not any(k.startswith("eight/") for k in _keys(deep))


@pytest.mark.parametrize("positive, negative, message", [
    ([], [], "at least one example"),
    ([{"text": "x", "id": 3}], [], "exactly one of"),
    ([{"txt": "x"}], [], "exactly one of"),
    ([{"text": "x", "weight": 0}], [], "weight must be a number above 0"),
    ([{"text": "x", "weight": float("nan")}], [], "weight must be"),
    ([{"text": ""}], [], "non-empty"),
    ([{"embedding": [1.0, 2.0]}], [], "an embedding of"),
    ([{"text": "a"}], [{"text": "a"}], "cancel out"),
    (["a"], [], "each example is an object"),
])
def test_bad_examples_are_refused_naming_them(index, positive, negative, message):
    with pytest.raises(UserError, match=message):
        index.search_examples(positive, negative, 5)


def test_the_command_line_and_http_take_examples_as_the_api_does(index, trained, digits, capsys):  # noqa: F811
    first = index.search_text(QUERIES["five"], 1)[0]
    photo_path = digits / first.key
    api = index.search_examples([{"text": QUERIES["five"]}, {"id": first.id}],
                                [{"text": QUERIES["three"]}, {"image": open_image(photo_path)}], 8)
    assert main(["search", str(index.store.path), QUERIES["five"], "--like-id", str(first.id), "--unlike",
                 QUERIES["three"], "--unlike-image", str(photo_path), "-k", "8", "--json", "--model", str(trained)]) \
        == 0, capsys.readouterr().err
    assert [h["key"] for h in json.loads(capsys.readouterr().out)] == _keys(api)
    server = _Server(index)
    try:
        body = {"positive": [{"text": QUERIES["five"]}, {"id": first.id}], "negative": [{"text": QUERIES["three"]}],
                "k": 8}
        status, reply = server.search(body)
        expected = index.search_examples(body["positive"], body["negative"], 8)
        assert status == 200 and [r["key"] for r in reply["results"]] == _keys(expected)
        assert reply["query"] == {"positive": [QUERIES["five"], first.id], "negative": [QUERIES["three"]]}
        # a multipart form: an image and a text together, less like another text
        boundary = "----dualtowertest"
        parts = [("text", None, QUERIES["five"].encode()), ("negative_text", None, QUERIES["three"].encode()),
                 ("k", None, b"6"), ("image", "x.png", photo_path.read_bytes())]
        data = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{n}\"".encode()
                        + (f"; filename=\"{f}\"\r\nContent-Type: application/octet-stream".encode() if f else b"")
                        + b"\r\n\r\n" + v + b"\r\n" for n, f, v in parts) + f"--{boundary}--\r\n".encode()
        status, _, raw = server.request("/search", data, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        expected = index.search_examples([{"image": open_image(photo_path)}, {"text": QUERIES["five"]}],
                                         [{"text": QUERIES["three"]}], 6)
        assert status == 200 and [r["key"] for r in json.loads(raw)["results"]] == _keys(expected)
        for bad, field in (({"positive": []}, "positive must be a list of 1 to"),
                           ({"positive": [{"text": "a", "weight": -1}]}, "positive[0].weight"),
                           ({"positive": [{"text": "a", "colour": 1}]}, "unknown fields ['colour']"),
                           ({"positive": "a"}, "positive must be a list"),
                           ({"negative": [{"text": "a"}], "text": "b"}, "negative examples go with positive"),
                           ({"positive": [{"id": 10**12}]}, "no item"),
                           ({"positive": [{"embedding": [1, 2]}]}, "embedding must have")):
            status, reply = server.search({"k": 5, **bad})
            assert status in (404, 422) and field in reply["error"], (bad, reply)
    finally:
        server.stop()


@pytest.mark.parametrize("engine", ["ivf", "milvus"])
def test_examples_and_duplicates_alike_on_every_engine(trained, digits, tmp_path, engine):  # noqa: F811
    """IVF-PQ (with its exact re-rank) and Milvus Lite answer a query by examples, with a filter, as the flat
    engine does, and find the same duplicate groups."""
    from dualtower.search import dedupe

    if engine == "milvus":
        pytest.importorskip("milvus_lite", reason="the test setup installs milvus-lite")
    model = dualtower.load(trained)
    build_index(str(digits), model, tmp_path / "flat", workers=0, engine="flat")
    build_index(str(digits), model, tmp_path / engine, workers=0,
                **({"backend": "milvus"} if engine == "milvus" else {"engine": "ivf"}))
    flat, other = SearchIndex(tmp_path / "flat", model=model), SearchIndex(tmp_path / engine, model=model)
    try:
        first = flat.search_text(QUERIES["seven"], 1)[0]
        other_id = next(h.id for h in other.search_text(QUERIES["seven"], 1))
        for index, item in ((flat, first.id), (other, other_id)):
            assert index.store.item(item).key == first.key
        query = lambda index, item: index.search_examples(  # noqa: E731
            [{"text": QUERIES["seven"]}, {"id": item}], [{"text": "the number one"}],
            10, where=["folder!=one"])
        assert _keys(query(other, other_id)) == _keys(query(flat, first.id))

        def groups(index):
            found = dedupe.find(index)
            items = index.store.items([i for g in found for i in g.ids])
            return sorted(sorted(items[i].key for i in g.ids) for g in found)

        assert groups(other) == groups(flat)
    finally:
        flat.close()
        other.close()
