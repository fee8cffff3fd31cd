"""Near-duplicates (issue 30, item 4): the same picture re-encoded, resized, slightly cropped, stripped of its
EXIF or in another format is grouped with it; a shifted view and a neighbouring frame of the same scene are not;
identical files are grouped as such. Through the API, the command line, HTTP and the page (Chromium), which also
searches by several examples picked from its results."""

import json
import shutil

import pytest
from PIL import Image

import dualtower
from dualtower.cli import main
from dualtower.search import SearchIndex, build_index, dedupe

from .test_search import _Server, chromium


def _variants(name: str, im: Image.Image, out) -> tuple[list[str], list[str]]:
    """(the true duplicates' file names, the burst-like ones'), written to `out`."""
    im = im.convert("RGB")
    im.thumbnail((480, 480))
    w, h = im.size
    exif = Image.Exif()
    exif[0x010F] = "test camera"
    dx, dy = round(w * 0.03), round(h * 0.03)
    dups = {"png": (im, "png", {}), "q90-exif": (im, "jpg", {"quality": 90, "exif": exif.tobytes()}),
            "q90": (im, "jpg", {"quality": 90}), "q40": (im, "jpg", {"quality": 40}),
            "half": (im.resize((w // 2, h // 2)), "png", {}), "crop3": (im.crop((dx, dy, w - dx, h - dy)), "jpg", {}),
            "webp": (im, "webp", {"quality": 85})}
    cw, ch, shift = round(w * 0.85), round(h * 0.85), round(w * 0.12)
    x0, y0 = (w - cw) // 2, (h - ch) // 2
    frame = im.rotate(1.5, resample=Image.BICUBIC, translate=(round(w * 0.06), 0)).crop(
        (round(w * 0.02), round(h * 0.02), w - round(w * 0.02), h - round(h * 0.02))).resize((w, h))
    burst = {"shifted": (im.crop((x0 + shift, y0, x0 + shift + cw, y0 + ch)), "jpg", {"quality": 90}),
             "frame": (Image.eval(frame, lambda v: min(255, round(v * 1.06))), "jpg", {"quality": 90})}
    names = {}
    for kind, (image, ext, options) in {**dups, **burst}.items():
        names[kind] = f"{name}-{kind}.{ext}"
        image.save(out / names[kind], **options)
    return [names[k] for k in dups], [names[k] for k in burst]


@pytest.fixture(scope="module")
def dupes(photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("dedupe")
    folder = root / "photos"
    folder.mkdir()
    expected = {}
    for name in ("astronaut", "coffee", "rocket", "sklearn_0"):
        expected[name] = _variants(name, photos[name], folder)
    shutil.copy(folder / "coffee-q90.jpg", folder / "coffee-copy.jpg")  # the same bytes under another name
    expected["coffee"][0].append("coffee-copy.jpg")
    model = dualtower.create_model("tiny", seed=0)
    dualtower.save(model, root / "model")
    build_index(str(folder), model, root / "index", workers=0, model_source=str(root / "model"))
    index = SearchIndex(root / "index", model=model)
    yield index, expected, root
    index.close()


def _groups_by_key(index, groups):
    items = index.store.items([i for g in groups for i in g.ids])
    return [sorted(items[i].key for i in g.ids) for g in groups]


def test_duplicates_group_and_burst_shots_stay_apart(dupes):
    index, expected, _ = dupes
    groups = dedupe.find(index)
    keys = _groups_by_key(index, groups)
    for name, (dups, burst) in expected.items():
        assert sorted(dups) in keys, (name, keys)  # every true duplicate together, nothing else with them
        assert not any(b in g for g in keys for b in burst), (name, keys)
    assert len(groups) == len(expected)
    coffee = next(g for g in groups if any(index.store.item(i).key == "coffee-copy.jpg" for i in g.ids))
    identical = [p for p in coffee.pairs if p["reason"] == "identical file content"]
    assert len(identical) == 1 and {index.store.item(i).key for i in (identical[0]["a"], identical[0]["b"])} == \
        {"coffee-q90.jpg", "coffee-copy.jpg"}
    assert coffee.reason == "near-duplicate"  # the group holds more than the identical pair
    near = [p for g in groups for p in g.pairs if p["reason"] == "near-duplicate"]
    assert near and all(p["hash_distance"] <= dedupe.MAX_DISTANCE and p["cosine"] >= dedupe.MIN_COSINE for p in near)
    assert dedupe.find(index, max_distance=0) != groups  # the threshold decides
    with pytest.raises(ValueError, match="max_distance in"):
        dedupe.find(index, max_distance=65)


def test_the_command_line_and_http_give_the_same_groups(dupes, capsys):
    index, expected, root = dupes
    api = _groups_by_key(index, dedupe.find(index))
    assert main(["dedupe", str(root / "index"), "--json"]) == 0
    cli = [sorted(i["key"] for i in g["items"]) for g in json.loads(capsys.readouterr().out)]
    assert cli == api
    assert main(["dedupe", str(root / "index")]) == 0
    text = capsys.readouterr()
    assert "group 1: near-duplicate" in text.out and "hash distance" in text.out and "groups" in text.err
    server = _Server(index)
    try:
        status, _, data = server.request("/duplicates")
        reply = json.loads(data)
        assert status == 200 and [sorted(i["key"] for i in g["items"]) for g in reply["groups"]] == api
        assert reply["groups"][0]["items"][0]["thumb"].startswith("/thumb/")
        for bad, field in (("?max_distance=99", "max_distance"), ("?min_cosine=2", "min_score"),
                           ("?colour=red", "unknown parameters")):
            status, _, data = server.request("/duplicates" + bad)
            assert status == 422 and field in json.loads(data)["error"], (bad, data)
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("chromedriver") is None or shutil.which("chromium") is None,
                    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
def test_the_page_shows_duplicates_and_searches_by_examples(dupes):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    index, expected, _ = dupes
    server = _Server(index)
    browser = chromium()
    try:
        wait = WebDriverWait(browser, 30)
        browser.get(server.url + "/")
        browser.find_element(By.ID, "dupes").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "groups of duplicates"))
        headings = [h.text for h in browser.find_elements(By.CSS_SELECTOR, "p.group")]
        assert len(headings) == len(expected) and all("near-duplicate" in h for h in headings)
        shown = [f.get_attribute("title").split("\n")[0] for f in browser.find_elements(By.CSS_SELECTOR, "figure")]
        assert sorted(shown) == sorted(k for dups, _ in expected.values() for k in dups)
        # more like two results, less like a third: the page's examples
        box = browser.find_element(By.ID, "q")
        box.send_keys("a photo")
        box.submit()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "results for"))
        figures = browser.find_elements(By.CSS_SELECTOR, "figure.result")
        keys = [f.get_attribute("title").split("\n")[0] for f in figures]
        plus = [f.find_element(By.CSS_SELECTOR, "button.ex") for f in figures[:2]]
        for button in plus:
            button.click()
        figures[2].find_elements(By.CSS_SELECTOR, "button.ex")[1].click()
        assert "2 to search like, 1 to search unlike" in browser.find_element(By.ID, "examples").text
        browser.find_element(By.ID, "by-examples").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "3 examples, 1 against"))
        wait.until(lambda b: b.execute_script("return current !== null && !current.loading"))  # pages settled
        got = [f.get_attribute("title").split("\n")[0] for f in browser.find_elements(By.CSS_SELECTOR, "figure.result")]
        items = {i.key: i.id for i in index.store.items(list(range(1, 200))).values()}
        want = index.search_examples([{"id": items[keys[0]]}, {"id": items[keys[1]]}, {"text": "a photo"}],
                                     [{"id": items[keys[2]]}], len(got))  # a page, or two if the first fit
        assert got == [h.key for h in want]
    finally:
        browser.quit()
        server.stop()


def test_the_index_thumbnail_comes_from_the_models_resize_where_it_fits(photos):
    """An index record's thumbnail is made from the transform's resize of the whole picture (a tenth of the cost):
    the sample is the transform's own, exactly; the thumbnail has the size one from the original has, looks the
    same and hashes within the near-duplicate threshold. A picture the resize would enlarge, one not RGB, a
    squashed resize and a strip cut to 16:1 take the thumbnail from the original."""
    import dataclasses

    import numpy as np

    from dualtower.images import ArrayTransform, ImageTransform
    from dualtower.search.records import sample_and_thumbnail, thumbnail

    cfg = dualtower.get_config("ViT-B-32").preprocess
    for transform in (ImageTransform(cfg), ArrayTransform(cfg)):
        for name, image in photos.items():
            image = image.convert("RGB")
            sample, small = sample_and_thumbnail(transform, image)
            assert np.array_equal(np.asarray(sample), np.asarray(transform(image))), name
            assert transform.sample_and_view(image)[1] is not None, name  # these photos take the cheap path
            ref = thumbnail(image)
            assert small.size == ref.size and small.mode == "RGB", (name, small.size, ref.size)
            error = np.asarray(small, np.float64) - np.asarray(ref, np.float64)
            psnr = 10 * np.log10(255 ** 2 / np.mean(error ** 2))  # in dB: 42 to 53 on these photos
            assert psnr > 40, (name, psnr)  # the same picture to the eye
            assert dedupe.distance(dedupe.hashes(small), dedupe.hashes(ref)) <= dedupe.MAX_DISTANCE, name
    photo = photos["astronaut"]
    small = Image.new("RGB", (100, 80), (200, 30, 30))
    rgba = photo.convert("RGBA")
    strip = photo.resize((4000, 200))
    squash = ImageTransform(dataclasses.replace(cfg, resize_mode="squash"))
    transform = ImageTransform(cfg)
    assert transform.sample_and_view(rgba)[1] is None and squash.sample_and_view(photo)[1] is None
    assert transform.sample_and_view(strip)[1] is None
    for t, image in ((transform, small), (transform, rgba), (squash, photo), (transform, strip)):
        assert np.array_equal(np.asarray(sample_and_thumbnail(t, image)[1]), np.asarray(thumbnail(image)))
