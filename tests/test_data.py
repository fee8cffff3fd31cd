"""Data sources: every kind yields image + caption; every bad sample is skipped, counted by reason, never fatal."""

import io
import json
import pickle
import tarfile

import pytest
from PIL import Image

import dualtower
from dualtower.data import SkipStats, open_source
from dualtower.data.loader import SequentialPlan, ShuffledPlan, batches
from dualtower.data.webdataset import expand_braces
from dualtower.images import ImageTransform


def _jpeg(colour=(200, 30, 30), size=(20, 16)):
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def _drain(source, batch=4):
    """Read every record through the real loader; returns (captions, stats)."""
    transform = ImageTransform(dualtower.get_config("tiny").preprocess)
    plan = SequentialPlan(len(source), batch)
    stats, captions = SkipStats(), []
    for b in batches(source, plan, transform, 0, plan.steps, workers=1):
        stats.add(len(b), b.skips)
        captions += b.captions
        assert b.pixels.shape == (len(b), 3, 32, 32) and len(b.captions) == len(b)
    return captions, stats


def test_captions_file_csv_and_jsonl_with_bad_rows(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "good.jpg").write_bytes(_jpeg())
    (tmp_path / "img" / "broken.jpg").write_bytes(_jpeg()[:60])
    rows = [("img/good.jpg", "a red square"), ("img/missing.jpg", "gone"), ("img/good.jpg", "  "),
            ("img/broken.jpg", "truncated")]
    with open(tmp_path / "data.csv", "w") as f:
        f.write("path,text\n" + "".join(f"{p},{c}\n" for p, c in rows))
    captions, stats = _drain(open_source(str(tmp_path / "data.csv"), image_key="path", caption_key="text"))
    assert captions == ["a red square"]
    assert dict(stats.skipped) == {"missing image": 1, "empty caption": 1, "unreadable image": 1}
    assert stats.seen == stats.accepted + sum(stats.skipped.values()) == 4

    with open(tmp_path / "data.jsonl", "w") as f:
        f.write(json.dumps({"image": "img/good.jpg", "caption": "ok"}) + "\n{broken json\n")
    captions, stats = _drain(open_source(str(tmp_path / "data.jsonl")))
    assert captions == ["ok"] and dict(stats.skipped) == {"unreadable row": 1}

    with pytest.raises(ValueError, match="no column"):
        open_source(str(tmp_path / "data.csv"))  # the default column names are not in this file


def test_image_folder_with_txt_captions(tmp_path):
    for name, caption in (("a.jpg", "first"), ("sub/b.png", "second"), ("c.jpg", None)):
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (10, 10)).save(path)
        if caption:
            path.with_suffix(".txt").write_text(caption)
    captions, stats = _drain(open_source(str(tmp_path)))
    assert sorted(captions) == ["first", "second"] and dict(stats.skipped) == {"missing caption": 1}


class _Bomb:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_bad_members_and_pickles(tmp_path):
    marker = tmp_path / "unpickled"
    for shard in range(3):
        with tarfile.open(tmp_path / f"shards-{shard:04d}.tar", "w") as tar:
            for i in range(3):
                key = f"s{shard}_{i}"
                if i == 0:
                    _add(tar, f"{key}.json", json.dumps({"caption": f"json caption {shard}"}).encode())
                elif i == 1:
                    _add(tar, f"{key}.txt", f"text caption {shard}".encode())
                _add(tar, f"{key}.jpg", _jpeg())
                _add(tar, f"{key}.pyd", pickle.dumps(_Bomb(str(marker))))
    # Cut the last shard 100 bytes into the image of s2_1 (whose caption comes before it).
    last = tmp_path / "shards-0002.tar"
    data = last.read_bytes()
    last.write_bytes(data[: data.find(b"s2_1.jpg") + 512 + 100])

    source = open_source(str(tmp_path / "shards-{0000..0002}.tar"))
    captions, stats = _drain(source)
    assert not marker.exists()
    assert "json caption 0" in captions and "text caption 1" in captions
    assert dict(stats.skipped) == {"missing caption": 2, "truncated tar member": 1}
    assert source.truncated_shards == [str(last)]
    assert stats.seen == len(source) == stats.accepted + sum(stats.skipped.values())


def test_brace_expansion():
    assert expand_braces("s-{0008..0011}.tar") == ["s-0008.tar", "s-0009.tar", "s-0010.tar", "s-0011.tar"]
    assert expand_braces("{a,b}-{1..2}.tar") == ["a-1.tar", "a-2.tar", "b-1.tar", "b-2.tar"]


def test_builtin_digits_split_and_captions():
    train, test = open_source("builtin:digits"), open_source("builtin:digits:test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert not {train.sample_id(i) for i in range(len(train))} & {test.sample_id(i) for i in range(len(test))}
    sample = train.load(0)
    assert sample.image.mode == "RGB" and train.classes[sample.label] in sample.caption


def test_fashion_mnist_names_its_package_when_absent(tmp_path, monkeypatch):
    from dualtower.data import builtin

    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        builtin.fashion_mnist(root=str(tmp_path))


def test_shuffled_plan_covers_each_record_once_per_epoch_across_ranks():
    plans = [ShuffledPlan(100, 20, seed=3, rank=r, world=2) for r in range(2)]
    seen = [i for step in range(5) for p in plans for i in p.indices(step)]
    assert sorted(seen) == list(range(100))
    assert plans[0].indices(5) != plans[0].indices(0)  # a new permutation next epoch


def test_class_folders_give_labelled_samples(tmp_path):
    for name in ("ankle_boot", "bag"):
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.new("RGB", (12, 12), (i * 100, 0, 0)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "bag" / "bad.jpg").write_bytes(b"junk")
    source = open_source(f"classes:{tmp_path}")
    assert source.classes == ["ankle boot", "bag"]
    captions, stats = _drain(source)
    assert sorted(captions) == ["a photo of a ankle boot"] * 2 + ["a photo of a bag"] * 2
    assert dict(stats.skipped) == {"unreadable image": 1}
