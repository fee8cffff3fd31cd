"""clip-retrieval's back-end protocol (issue 30, item 6): its own ClipClient (clip-retrieval 2.45.0, installed
without its dependencies, which this environment cannot take: numpy<2, pyarrow<16, open_clip<3) queries `serve` on
127.0.0.1 by text, by image and by embedding, with the results our /search gives; /metadata and /indices-list
answer as clip-retrieval's back end does; what the index cannot do is refused naming the field."""

import base64
import importlib.util
import json
import shutil

import numpy as np
import pytest

import dualtower
from dualtower.search import SearchIndex, build_index

from .test_search import QUERIES, _Server, digits, trained  # noqa: F401 (fixtures)


def _clip_client():
    """clip_retrieval.clip_client as published, loaded from its file: the package's __init__ imports its server
    (flask, torch models), which the client does not use."""
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None:
        pytest.skip("scripts/setup.sh test installs clip-retrieval (without its dependencies)")
    path = spec.submodule_search_locations[0] + "/clip_client.py"
    module_spec = importlib.util.spec_from_file_location("clip_client", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def service(trained, digits, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("clip-retrieval")
    for name in ("three", "seven", "one"):
        shutil.copytree(digits / name, root / "images" / name)
    model = dualtower.load(trained)
    build_index(str(root / "images"), model, root / "digits-index", workers=0)
    index = SearchIndex(root / "digits-index", model=model)
    server = _Server(index)
    yield index, server, root
    server.stop()
    index.close()


def test_clip_retrievals_own_client_gets_our_results(service):
    client_module = _clip_client()
    index, server, root = service
    client = client_module.ClipClient(url=server.url + "/knn-service", indice_name="digits-index", num_images=12,
                                      deduplicate=False, use_safety_model=False, use_violence_detector=False)
    by_text = client.query(text=QUERIES["three"])
    expected = index.search_text(QUERIES["three"], 12)
    assert [r["id"] for r in by_text] == [h.id for h in expected]
    assert np.allclose([r["similarity"] for r in by_text], [h.score for h in expected], atol=1e-5)
    first = by_text[0]
    assert first["url"] == f"{server.url}/image/{first['id']}" and first["image_path"] == expected[0].key
    status, _, data = server.request(first["url"].removeprefix(server.url))
    assert status == 200 and data[:4] == b"\x89PNG"
    photo = root / "images" / expected[0].key
    by_image = client.query(image=str(photo))
    assert [r["id"] for r in by_image] == [h.id for h in index.search_image(dualtower.images.open_image(photo), 12)]
    vector = index.embed_text(QUERIES["seven"]).tolist()
    by_embedding = client.query(embedding_input=vector)
    assert [r["id"] for r in by_embedding] == [h.id for h in index.search_vector(np.array(vector), 12)]
    # clip-retrieval's deduplication: no two results within cosine 0.94 of each other
    deduplicated = client_module.ClipClient(url=server.url + "/knn-service", indice_name="digits-index",
                                            num_images=12, use_safety_model=False, use_violence_detector=False)
    kept = deduplicated.query(text=QUERIES["three"])
    vectors = np.stack([index.item_vector(r["id"]) for r in kept])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    similar = vectors @ vectors.T - 2 * np.eye(len(kept))
    assert similar.max() < 0.94 and [r["id"] for r in kept][0] == by_text[0]["id"]


def test_metadata_indices_and_refusals(service):
    index, server, _ = service
    assert json.loads(server.request("/indices-list")[2]) == ["digits-index"]
    hits = index.search_text("the number one", 3)
    status, _, data = server.request("/metadata", json.dumps({"ids": [h.id for h in hits],
                                                              "indice_name": "digits-index"}).encode())
    answer = json.loads(data)
    assert status == 200 and [a["id"] for a in answer] == [h.id for h in hits]
    assert answer[0]["metadata"]["image_path"] == hits[0].key and answer[0]["metadata"]["url"].endswith(
        f"/image/{hits[0].id}")
    base = {"text": "three", "modality": "image", "num_images": 5, "indice_name": "digits-index"}
    for change, status_wanted, field in (({"modality": "text"}, 422, "modality"),
                                         ({"image_url": "http://example.com/a.jpg", "text": None}, 422, "image_url"),
                                         ({"indice_name": "laion5B"}, 404, "indice_name"),
                                         ({"num_images": 0}, 422, "k must be"),
                                         ({"image": "not base64!", "text": None}, 422, "base64"),
                                         ({"image": base64.b64encode(b"not an image").decode(), "text": None}, 400,
                                          "image"),
                                         ({"colour": 1}, 422, "unknown fields")):
        status, _, data = server.request("/knn-service", json.dumps({**base, **change}).encode())
        assert status == status_wanted and field in json.loads(data)["error"], (change, data)
