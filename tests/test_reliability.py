"""The reliability suite: hostile and broken input through the commands a user runs, tallied per category as
cases tried, refused with one line, handled (accepted, and right), tracebacks, silently wrong and code executed.
The goal, asserted: no traceback, nothing silently wrong, no code executed. `pytest -s` prints the table; the
cases themselves are the round-2 hardening cases (tests/test_hardening.py) and this round's (tests/test_security.py,
tests/test_search.py), run here through the command line."""

import json
import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from PIL import Image

import dualtower
from dualtower.cli import main

from .test_hardening import _bad_images, _bad_safetensors, _malicious_files
from .test_security import _hostile_index, _rewrite_zip, sharded_run  # noqa: F401 (a fixture)

COLUMNS = ("tried", "refused in one line", "handled", "tracebacks", "silently wrong", "code executed")


class Tally:
    def __init__(self, capsys, marker: Path):
        self.capsys, self.marker = capsys, marker
        self.rows: dict[str, Counter] = defaultdict(Counter)
        self.failures: list[str] = []

    def command(self, category: str, case: str, argv: list[str], expect: str = "refused", check=None):
        """Run `dualtower ARGV`; `expect` "refused" (exit 2, one line) or "handled" (exit 0, `check()` true)."""
        self.capsys.readouterr()
        try:
            rc = main(argv)
        except BaseException as e:  # what main() must never let out
            rc, err = -1, f"Traceback: {type(e).__name__}: {e}"
        else:
            captured = self.capsys.readouterr()
            err, self.out = captured.err, captured.out
        lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("note:", "skipped "))]
        row = self.rows[category]
        row["tried"] += 1
        if self.marker.exists():
            row["code executed"] += 1
            self.failures.append(f"{category}/{case}: code executed")
            self.marker.unlink()
        if "Traceback" in err or rc not in (0, 2):
            row["tracebacks"] += 1
            self.failures.append(f"{category}/{case}: exit {rc}: {err[-300:]}")
        elif expect == "refused" and rc == 2 and len(lines) == 1:
            row["refused in one line"] += 1
        elif expect == "handled" and rc == 0 and (check is None or check()):
            row["handled"] += 1
        else:
            row["silently wrong"] += 1
            self.failures.append(f"{category}/{case}: exit {rc}, expected {expect}: {err[-300:]}")

    def table(self) -> str:
        width = max(len(c) for c in self.rows) + 2
        head = "category".ljust(width) + "".join(f"{c:>22}" for c in COLUMNS)
        body = [name.ljust(width) + "".join(f"{row[c]:>22}" for c in COLUMNS) for name, row in self.rows.items()]
        total = Counter()
        for row in self.rows.values():
            total.update(row)
        return "\n".join([head, *body, "all".ljust(width) + "".join(f"{total[c]:>22}" for c in COLUMNS)])


def test_the_reliability_suite(tmp_path, capsys, photos, sharded_run):  # noqa: F811
    marker = tmp_path / "pwned"
    t = Tally(capsys, marker)
    model = tmp_path / "model"
    dualtower.save(dualtower.create_model("tiny", seed=1), model)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(("coffee", "astronaut", "chelsea")):
        photos[name].resize((64, 48)).save(folder / f"{i}.png")

    # checkpoints other people made: pickles, damaged safetensors, hostile sharded indexes, a hostile train state
    for case, path in {**_malicious_files(tmp_path, marker), **_bad_safetensors(tmp_path)}.items():
        t.command("checkpoint files", case, ["convert", str(path), str(tmp_path / "out"), "--arch", "tiny"])
    for payload, data in _hostile_index(
            (sharded_run["legacy_step"] / "sharded" / ".metadata").read_bytes(), marker).items():
        run = tmp_path / f"run-{payload}"
        shutil.copytree(sharded_run["legacy"], run, symlinks=True)
        (run / "checkpoints" / sharded_run["step"].name / "sharded" / ".metadata").write_bytes(data)
        for command in (["convert", str(run), str(tmp_path / "o")], ["embed", "--model", str(run), "--data",
                        str(folder), "--out", str(tmp_path / "e.npz"), "--workers", "0"], ["train", f"--resume={run}"]):
            t.command("sharded checkpoints", f"{payload} {command[0]}", command)

    # export folders: hand-edited configs, and a torch-export archive with a pickled weight
    assert main(["export", str(model), str(tmp_path / "exp")]) == 0
    good = json.loads((tmp_path / "exp" / "config.json").read_text())
    for field, value in (("normalized", "false"), ("logit_scale", float("nan")), ("precision", "int4"),
                         ("graphs", {"text": {"file": "../../x.onnx"}}), ("model", {"vision": 5})):
        bad = tmp_path / f"exp-{field}"
        shutil.copytree(tmp_path / "exp", bad)
        (bad / "config.json").write_text(json.dumps({**good, field: value}))
        t.command("export folders", field, ["classify", "--runtime", "onnx", "--model", str(bad), "--labels",
                                            "a,b", str(folder)])

    # images: empty, truncated, random bytes, HTML, EPS named .jpg, a bomb's header, a folder named .png
    images = tmp_path / "images"
    images.mkdir()
    for case, path in _bad_images(images, photos["coffee"].resize((64, 48))).items():
        t.command("images", case, ["classify", "--model", str(model), "--labels", "a,b", str(path)])
    empty = tmp_path / "empty"
    empty.mkdir()
    t.command("images", "a folder with no images", ["classify", "--model", str(model), "--labels", "a,b", str(empty)])

    # index folders: a garbage or foreign engine (rebuilt, answers right), a damaged database (refused)
    def index(out, data=folder, *extra):
        return ["index", "--model", str(model), "--out", str(out), "--workers", "0", str(data), *extra]

    assert main(index(tmp_path / "idx")) == 0 and main(index(tmp_path / "other", images)) == 0
    capsys.readouterr()
    search = ["search", str(tmp_path / "idx"), "--json", "-k", "3", "--image", str(folder / "0.png")]
    assert main(search) == 0
    right = json.loads(capsys.readouterr().out)

    def answers_right():
        assert main(search) == 0
        return json.loads(t.capsys.readouterr().out) == right

    for case, data in (("garbage engine", b"\0garbage" * 50), ("foreign engine",
                                                               (tmp_path / "other" / "engine.faiss").read_bytes())):
        (tmp_path / "idx" / "engine.faiss").write_bytes(data)
        t.command("index folders", case, search, "handled", lambda: json.loads(t.out) == right)
    (tmp_path / "idx" / "meta.sqlite").write_bytes(b"not a database" * 100)
    t.command("index folders", "damaged database: search", search)
    t.command("index folders", "damaged database: index", index(tmp_path / "idx"))
    t.command("index folders", "damaged database: index --repair", index(tmp_path / "idx", folder, "--repair"),
              "handled", answers_right)
    odd = tmp_path / "odd"
    odd.mkdir()
    Image.new("RGB", (20, 20)).save(os.fsdecode(os.fsencode(odd) + b"/bad\xff.png"))
    Image.new("RGB", (20, 20)).save(odd / "line\nbreak.png")
    t.command("index folders", "names not UTF-8 or with a newline", index(tmp_path / "odd-idx", odd), "handled",
              lambda: len(dualtower.search.SearchIndex(tmp_path / "odd-idx", model=dualtower.load(model))) == 1)

    # Hub specs that are paths, not names
    for spec in ("hf-hub:acme/clip@../../etc", "hf-hub:../x/y", "hf-hub:acme/clip@a//b"):
        t.command("hub specs", spec, ["convert", spec, str(tmp_path / "hub-out")])

    # the search service: generated hostile requests on loopback (the full fuzz, 1,200 requests: test_search.py)
    from dualtower.search import SearchIndex

    from .test_search import _hostile_requests, _Server

    assert main(index(tmp_path / "service-idx")) == 0
    served = SearchIndex(tmp_path / "service-idx", model=dualtower.load(model))
    server = _Server(served)
    try:
        row = t.rows["search service"]
        for method, path, body, kind in _hostile_requests(__import__("random").Random(1), 300, served.store.dim,
                                                          next(iter(served.store.items([1, 2, 3])))):
            status, ctype, data = server.request(path, body, {"Content-Type": kind} if kind else {}, method)
            row["tried"] += 1
            if status >= 500:
                row["tracebacks"] += 1
                t.failures.append(f"search service: {method} {path} -> {status} {data[:200]!r}")
            elif status >= 400:
                json_error = ctype.startswith("application/json") and "error" in json.loads(data)
                row["refused in one line" if json_error else "silently wrong"] += 1
            else:
                row["handled"] += 1
    finally:
        server.stop()
        served.close()

    print("\n" + t.table())
    assert not t.failures, t.failures
    assert all(row["tried"] == row["refused in one line"] + row["handled"] for row in t.rows.values())
