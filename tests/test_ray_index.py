"""`dualtower index --executor ray` on real Ray clusters on this machine: a local one the command starts, and a
simulated two-node one (Ray's cluster utilities); shards published exactly once under SIGKILLs of actors and
drivers; the merged index searched exactly as a local build of the same files; `index merge` into FAISS and
Milvus Lite; img2dataset's Parquet output as it is."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dualtower
from dualtower.cli import main
from dualtower.data import Sample, Source
from dualtower.errors import UserError
from dualtower.search import SearchIndex, Store, build_index
from dualtower.search.records import Records, prepare_all
from dualtower.search.cluster.shards import ShardError, Shards, Unit

ray = pytest.importorskip("ray")  # the test set-up installs dualtower[ray]; a plain install has no Ray

F16 = 2e-3  # float16 rounding of unit vectors (a half ulp at 0.5 is 2.4e-4; batches may differ in the last bits)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ray-model") / "model"
    dualtower.save(dualtower.create_model("tiny", seed=3), path)
    return path


@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory, photos):
    """Real photos, the held-out digits as PNGs, and three bad files: 120 records."""
    from dualtower.data import open_source

    root = tmp_path_factory.mktemp("ray-photos")
    for name, image in photos.items():
        image.save(root / f"{name}.jpg", quality=90)
    source = open_source("builtin:digits:test")
    (root / "digits").mkdir()
    for i in range(120 - len(photos) - 3):
        source.load(i).image.save(root / "digits" / f"{i:04d}.png")
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.png").write_text("not an image")
    whole = (root / "astronaut.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 3])
    return root


@pytest.fixture(scope="module")
def cluster():
    """A simulated two-node Ray cluster on this host: two raylets of one CPU each."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


def _vectors(index: Path) -> dict:
    store = Store(index)
    try:
        rows = dict(store.db.execute("SELECT key, row FROM items"))
        vectors = store.vectors()
        return {k: vectors[r].astype(np.float32) for k, r in rows.items()}
    finally:
        store.close()


def _skips(index: Path) -> dict:
    store = Store(index)
    try:
        return {k: reason for k, reason, _ in store.skipped()}
    finally:
        store.close()


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dualtower", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_ray_index_equals_the_local_build_and_a_rerun_embeds_nothing(tmp_path, model_dir, photos_dir):
    """The command as a user runs it (a local Ray cluster it starts itself), then again: nothing to embed."""
    local = tmp_path / "local"
    build_index(str(photos_dir), dualtower.load(model_dir), local)
    out = tmp_path / "ray"
    args = ("index", str(photos_dir), "--model", str(model_dir), "--out", str(out), "--executor", "ray",
            "--shard-size", "16", "--cpus", "2", "--precision", "fp32")
    first = _run(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "seen 120 = accepted 117 + skipped 3" in first.stdout, first.stdout
    assert "8 shards, 8 embedded now" in first.stdout and "ray: 1 nodes, 2 CPUs" in first.stdout
    second = _run(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "8 shards, 0 embedded now (8 were done)" in second.stdout and "merged 0 shards" in second.stdout
    assert "; ray:" not in second.stdout  # no cluster was started: nothing to do

    ours, theirs = _vectors(out), _vectors(local)
    assert ours.keys() == theirs.keys() and len(ours) == 117
    assert max(float(np.abs(ours[k] - theirs[k]).max()) for k in ours) <= F16
    assert _skips(out) == _skips(local) and len(_skips(out)) == 3
    a, b = SearchIndex.open(out, str(model_dir)), SearchIndex.open(local, str(model_dir))
    for text in ("a cat", "an astronaut", "the number seven", "a cup of coffee"):
        assert [h.key for h in a.search_text(text, 10)] == [h.key for h in b.search_text(text, 10)]
    assert [h.key for h in a.search_image(Image.open(photos_dir / "coffee.jpg"), 5)] == \
        [h.key for h in b.search_image(Image.open(photos_dir / "coffee.jpg"), 5)]


def test_two_nodes_then_merge_into_milvus(tmp_path, model_dir, photos_dir, cluster):
    """The simulated two-node cluster: an actor on each node; then `dualtower index merge` of the same shards
    into a second index on Milvus Lite, searched alike."""
    from dualtower.search import build_index_ray
    from dualtower import runtimes
    import functools

    out = tmp_path / "two"
    report = build_index_ray(str(photos_dir), functools.partial(runtimes.open, str(model_dir)), out, shard_size=10,
                             address=cluster.address)
    assert report.run.nodes == 2 and report.run.actors == 2 and report.run.committed == 12
    assert report.seen == report.accepted + sum(report.skipped.values()) == 120
    milvus = tmp_path / "milvus"
    assert main(["index", "merge", str(out / "shards"), "--out", str(milvus), "--backend", "milvus"]) == 0
    a, b = SearchIndex.open(out, str(model_dir)), SearchIndex.open(milvus, str(model_dir))
    for text in ("a rocket", "the number two"):
        assert [h.key for h in a.search_text(text, 8)] == [h.key for h in b.search_text(text, 8)]
    assert main(["index", "merge", str(out / "shards"), "--out", str(milvus)]) == 0  # again: nothing new


def _webdataset(path: Path, photos: dict, names: list[str], start: int) -> None:
    """A tar shard as img2dataset writes one: KEY.jpg, KEY.txt, KEY.json per sample."""
    import io
    import tarfile

    with tarfile.open(path, "w") as tar:
        for n, name in enumerate(names):
            key = f"{start + n:09d}"
            buffer = io.BytesIO()
            photos[name].convert("RGB").save(buffer, format="JPEG")
            members = {"jpg": buffer.getvalue() if name != "broken" else b"\xff\xd8 not a jpeg",
                       "txt": name.encode(), "json": json.dumps({"key": key, "caption": name}).encode()}
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_tar_shards_go_a_file_a_unit_and_a_changed_shard_alone_is_redone(tmp_path, model_dir, photos, cluster):
    from dualtower import runtimes
    from dualtower.search import build_index_ray
    import functools

    names = list(photos)
    photos = {**photos, "broken": photos[names[0]]}
    _webdataset(tmp_path / "00000.tar", photos, names[:4] + ["broken"], 0)
    _webdataset(tmp_path / "00001.tar", photos, names[4:], 100)
    spec = str(tmp_path / "{00000..00001}.tar")
    open_model = functools.partial(runtimes.open, str(model_dir))
    report = build_index_ray(spec, open_model, tmp_path / "ray", address=cluster.address)
    assert (report.units, report.pending, report.seen, report.accepted) == (2, 2, len(names) + 1, len(names))
    assert dict(report.skipped) == {"unreadable image": 1}
    build_index(spec, dualtower.load(model_dir), tmp_path / "local")
    ours, theirs = _vectors(tmp_path / "ray"), _vectors(tmp_path / "local")
    assert ours.keys() == theirs.keys() and max(float(np.abs(ours[k] - theirs[k]).max()) for k in ours) <= F16

    time.sleep(0.01)
    _webdataset(tmp_path / "00001.tar", photos, names[4:] + names[:1], 100)  # one more sample
    again = build_index_ray(spec, open_model, tmp_path / "ray", address=cluster.address)
    assert (again.units, again.pending, again.run.committed) == (2, 1, 1)
    assert again.seen == len(names) + 2 and again.accepted == len(names) + 1
    assert f"00001.tar/{100 + len(names) - 4:09d}" in _vectors(tmp_path / "ray")


def _workers() -> list[int]:
    """The pids of this host's Ray actor and task processes (their titles start with ray::)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if title.startswith(b"ray::MapWorker") or title.startswith(b"ray::Map"):
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_sigkills_of_actors_and_drivers_leave_every_record_once(tmp_path, model_dir, photos_dir, cluster):
    """Three runs, each SIGKILLed in flight (actors at random moments, then the driver), then a clean run:
    every record counted once, each in exactly one shard, vectors equal to a local build's."""
    rng = random.Random(7)
    out = tmp_path / "faults"
    args = [sys.executable, "-m", "dualtower", "index", str(photos_dir), "--model", str(model_dir), "--out",
            str(out), "--executor", "ray", "--shard-size", "3", "--ray-address", cluster.address,
            "--precision", "fp32"]
    kills = {"actor": 0, "driver": 0}
    shards = Shards(out / "shards")

    def committed() -> int:
        return len(shards.committed()) if shards.path.is_dir() else 0

    def after_a_commit(driver) -> bool:
        """Wait until this run publishes a shard, then a random moment more: the kills land mid-work."""
        before, deadline = committed(), time.monotonic() + 120
        while committed() == before and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        return driver.poll() is None

    for run in range(3):
        driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2 if run < 2 else 1):
            victims = _workers() if after_a_commit(driver) else []
            if victims:
                os.kill(rng.choice(victims), signal.SIGKILL)
                kills["actor"] += 1
        if after_a_commit(driver):
            driver.kill()
            kills["driver"] += 1
        driver.communicate(timeout=60)
    assert kills["actor"] + kills["driver"] >= 5, kills
    partway = committed()
    assert 0 < partway < 40  # the runs were killed mid-work (40 shards in all)

    clean = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert "seen 120 = accepted 117 + skipped 3" in clean.stdout, clean.stdout
    assert f"40 shards, {40 - partway} embedded now" in clean.stdout

    keys = []
    for unit in shards.committed():
        _, vectors, accepted, skipped = shards.read(unit)
        keys += [r["key"] for r in accepted] + [s["key"] for s in skipped]
    assert len(keys) == len(set(keys)) == 120  # each record in exactly one shard
    local = tmp_path / "local"
    build_index(str(photos_dir), dualtower.load(model_dir), local)
    ours, theirs = _vectors(out), _vectors(local)
    assert ours.keys() == theirs.keys()
    assert max(float(np.abs(ours[k] - theirs[k]).max()) for k in ours) <= F16
    assert _skips(out) == _skips(local)
    print(f"kills: {kills}; shards published before the clean run: {partway} of 40")


def test_a_model_that_differs_per_process_is_refused(tmp_path, photos_dir, cluster):
    """An architecture name opens random weights, different in every actor: refused, naming the cure."""
    result = _run("index", str(photos_dir), "--model", "tiny", "--out", str(tmp_path / "x"), "--executor", "ray",
                  "--ray-address", cluster.address, "--shard-size", "60")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "random weights, different in every process" in result.stderr
    from dualtower import runtimes
    from dualtower.search import build_index_ray

    with pytest.raises(UserError, match="random weights that differ per process"):  # the library's own check
        build_index_ray(str(photos_dir), lambda: runtimes.open("tiny"), tmp_path / "z", shard_size=60,
                        address=cluster.address)
    assert _run("index", str(photos_dir), "--model", "tiny", "--out", str(tmp_path / "y"),
                "--shard-size", "5").stderr.strip().endswith("--shard-size is for --executor ray")


class _Slow(Source):
    """Records of which one never finishes reading (a file on a stalled network mount, say)."""

    def __init__(self, photos: dict):
        self.images = list(photos.values())[:4]

    def __len__(self):
        return len(self.images)

    def load(self, index):
        if index == 1:
            time.sleep(30)
        return Sample(self.images[index], "", f"photo-{index}")


def test_a_record_that_hangs_costs_its_time_limit_not_the_task(photos):
    from dualtower.images import ImageTransform
    from dualtower.config import PreprocessConfig

    source = _Slow(photos)
    todo = [(i, f"photo-{i}", None, None, None) for i in range(len(source))]
    started = time.monotonic()
    items = prepare_all(Records(source, todo, ImageTransform(PreprocessConfig())), threads=2, deadline_s=1.0)
    assert time.monotonic() - started < 10
    assert [it.get("bad") for it in items] == [None, "decoding timed out", None, None]
    assert "within 1 s" in items[1]["detail"]


def test_a_shard_is_published_once_and_a_damaged_one_refused(tmp_path):
    shards = Shards(tmp_path)
    unit = Unit("00001-000000", [["a", 1, 2]])
    vectors = np.ones((1, 4), np.float32) / 2
    record = {"key": "a", "path": None, "size": 1, "mtime_ns": 2, "sha256": "0" * 64, "width": 3, "height": 3,
              "caption": None, "fields": {"tag": "x"}, "phash": b"\x01" * 24, "thumb": b"\xff\xd8"}
    assert shards.write(unit, vectors, [record], []) is True
    assert shards.write(unit, vectors * 0, [record], []) is False  # a retry: the first copy stays
    manifest, got, accepted, skipped = shards.read(unit.id)
    assert got.dtype == np.float16 and float(got[0, 0]) == 0.5 and accepted == [record] and skipped == []
    with open(tmp_path / unit.id / "vectors.npy", "r+b") as f:
        f.seek(-2, os.SEEK_END)
        f.write(b"\x00\x7c")
    with pytest.raises(ShardError, match="damaged shard.*vectors.npy differs"):
        shards.read(unit.id)


def test_the_plan_keeps_its_units_and_a_changed_file_gets_a_new_generation(tmp_path):
    shards = Shards(tmp_path)
    first = shards.plan([("a", 1, 1), ("b", 1, 1), ("c", 1, 1)], shard_size=2)
    assert [u.id for u in first] == ["00001-000000", "00001-000001"]
    again = shards.plan([("a", 1, 1), ("b", 1, 1), ("c", 1, 1)], shard_size=2)
    assert [(u.id, u.records) for u in again] == [(u.id, u.records) for u in first]
    changed = shards.plan([("a", 1, 1), ("b", 1, 5), ("c", 1, 1), ("d", 2, 2)], shard_size=2)
    assert [u.id for u in changed] == ["00001-000000", "00001-000001", "00002-000000"]
    assert changed[-1].records == [["b", 1, 5], ["d", 2, 2]]


def test_img2dataset_parquet_output_as_it_is(tmp_path, model_dir, photos):
    """img2dataset's Parquet shards: the image bytes in `jpg`, a `key`, failed downloads with no image."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    for shard, names in enumerate([list(photos)[:3], list(photos)[3:]]):
        rows = []
        for i, name in enumerate(names):
            buffer = io.BytesIO()
            photos[name].convert("RGB").save(buffer, format="JPEG")
            rows.append({"key": f"{shard:05d}{i:04d}", "caption": name, "url": f"http://x/{name}",
                         "status": "success", "error_message": None, "jpg": buffer.getvalue()})
        rows.append({"key": f"{shard:05d}9999", "caption": "gone", "url": "http://x/gone",
                     "status": "failed_to_download", "error_message": "404", "jpg": None})
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{shard:05d}.parquet")
    out = tmp_path / "index"
    report = build_index(str(tmp_path / "{00000..00001}.parquet"), dualtower.load(model_dir), out)
    assert report.seen == len(photos) + 2 and report.accepted == len(photos)
    assert dict(report.skipped) == {"missing image": 2}
    coffee = list(photos).index("coffee")  # in the first shard (the first three photos)
    hit = SearchIndex.open(out, str(model_dir)).search_image(photos["coffee"], 1)[0]
    assert hit.key == f"00000.parquet/00000{coffee:04d}"
    assert json.loads(Store(out).get("source"))["spec"].endswith("{00000..00001}.parquet")



def test_the_local_executor_never_imports_ray(tmp_path, model_dir, photos_dir):
    code = ("import sys\nfrom dualtower.cli import main\n"
            f"assert main(['index', {str(photos_dir)!r}, '--model', {str(model_dir)!r}, '--out', "
            f"{str(tmp_path / 'index')!r}, '--workers', '0']) == 0\n"
            "print('ray imported:', any(m == 'ray' or m.startswith('ray.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ray imported: False"), out.stderr[-2000:]
    merge = _run("index", "merge", "--help")
    assert merge.returncode == 0 and merge.stdout.startswith("usage: dualtower index merge")
    assert "index-merge" not in _run("--help").stdout
