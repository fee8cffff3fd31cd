"""The command line: the smoke run, convert, archs."""

import subprocess
import sys

import torch

import dualtower
from dualtower.cli import main


def test_smoke_run_prints_similarity_table(capsys):
    assert main(["smoke"]) == 0
    out = capsys.readouterr().out
    assert "china.jpg" in out and "flower.jpg" in out and "a photo of a cat" in out


def test_convert_round_trip_through_every_format(tmp_path):
    model = dualtower.create_model("tiny", seed=4)
    dualtower.save(model, tmp_path / "ours")
    assert main(["convert", str(tmp_path / "ours"), str(tmp_path / "oc.safetensors"), "--to", "open_clip"]) == 0
    assert main(["convert", str(tmp_path / "oc.safetensors"), str(tmp_path / "hf"), "--arch", "tiny",
                 "--to", "hf"]) == 0
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back = dualtower.load(tmp_path / "back")
    pixels, ids = torch.randn(2, 3, 32, 32), dualtower.get_tokenizer("tiny")(["a dog", "a cat"])
    with torch.no_grad():
        a, b = model(pixels, ids).logits_per_image, back(pixels, ids).logits_per_image
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "nothing.bin"), str(tmp_path / "out"), "--arch", "tiny"]) == 2
    assert "nothing.bin" in capsys.readouterr().err


def test_module_entry_point_lists_architectures():
    out = subprocess.run([sys.executable, "-m", "dualtower", "archs"], capture_output=True, text=True, check=True)
    assert "ViT-bigG-14-quickgelu" in out.stdout
