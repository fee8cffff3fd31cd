"""The main job: the demo trains on built-in data and meets its accuracy target on held-out images."""

import json
import os

import pytest

from dualtower.cli import main

REPORT_FILES = ["report.md", "results.json", "loss.png", "confusion.png", "predictions.png", "similarity.png"]


def _check(out, target):
    results = json.loads((out / "results.json").read_text())
    for key in ("zeroshot_top1", "zeroshot_top5", "retrieval", "train_seconds", "total_seconds", "data"):
        assert key in results
    assert results["zeroshot_top1"] >= target, results["zeroshot_top1"]
    assert set(results["retrieval"]) >= {"image_to_text", "text_to_image"}
    assert results["data"]["train_samples"]["seen"] == results["data"]["train_samples"]["accepted"]
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    print(f"top-1 {results['zeroshot_top1']:.4f}, train {results['train_seconds']:.0f} s, "
          f"total {results['total_seconds']:.0f} s")


def test_demo_on_digits(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "held-out images, prompt wording unseen in training" in printed and "report:" in printed
    _check(tmp_path, 0.95)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/usr/share/datasets/fashion-mnist"),
                    reason="needs Debian's dataset-fashion-mnist (.ci/run installs it)")
def test_demo_on_fashion_mnist(tmp_path):
    assert main(["demo", "--data", "builtin:fashion-mnist", "--out", str(tmp_path)]) == 0
    _check(tmp_path, 0.80)
