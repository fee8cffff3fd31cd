"""The command line: the smoke run, convert, archs."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
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


def test_a_closed_pipe_ends_quietly_and_out_folders_are_made(tmp_path):
    """`dualtower archs | head -1` gave BrokenPipeError and exit 1 every time; `--out out/x.json` with no out/
    did all the work, then failed to write (issue 33, items 10 and 11)."""
    root = Path(__file__).resolve().parent.parent
    # `true` closes the pipe before the listing is written (as `head` does once it has its line)
    out = subprocess.run(f"set -o pipefail; {sys.executable} -m dualtower.cli archs | true", shell=True,
                         executable="/bin/bash", capture_output=True, text=True, cwd=root)
    assert out.returncode == 0 and out.stderr == "", out
    assert main(["eval", "zeroshot", "--model", "tiny", "--data", "builtin:digits:test",
                 "--out", str(tmp_path / "new" / "deeper" / "zs.json")]) == 0
    assert json.loads((tmp_path / "new" / "deeper" / "zs.json").read_text())


def test_a_missing_model_says_so_and_names_the_closest(capsys):
    """`--model nonexist` said "not a checkpoint directory nor a .safetensors/.bin file"; an unknown architecture
    listed 64 names (issue 33, item 14)."""
    assert main(["classify", "--model", "vit-b-32", "--labels", "a,b", "x.png"]) == 2
    err = capsys.readouterr().err
    assert "vit-b-32: no such file or directory, and not a name from `dualtower models` nor an architecture " \
           "(closest: ViT-B-32" in err, err
    assert main(["classify", "--model", "runs/nope/checkpoints", "--labels", "a,b", "x.png"]) == 2
    assert "runs/nope/checkpoints: no such file or directory\n" in capsys.readouterr().err
    with pytest.raises(KeyError, match=r"unknown architecture 'vit-l-14': did you mean ViT-L-14"):
        dualtower.create_model("vit-l-14")


def test_user_errors_are_one_line_and_library_faults_point_to_debug(monkeypatch, capsys, tmp_path):
    """A user error (an unknown architecture, a missing file) is one line and exit 2. A plain ValueError from
    inside the library is a fault of ours, not the user's: one line naming its type, the --debug hint, exit 1;
    with --debug, the traceback (the exception itself)."""
    import dualtower.plan
    from dualtower.errors import UserError

    assert main(["plan", "no-such-arch", "--batch", "8"]) == 2
    err = capsys.readouterr().err
    assert "unknown architecture 'no-such-arch'" in err and "--debug" not in err and len(err.splitlines()) == 1
    assert main(["classify", "--model", str(tmp_path / "missing"), "--labels", "a,b", str(tmp_path)]) == 2
    assert "no such file or directory" in capsys.readouterr().err

    def broken(*args, **kwargs):
        raise ValueError("an internal shape mismatch")

    monkeypatch.setattr(dualtower.plan, "plan", broken)
    assert main(["plan", "tiny", "--batch", "8"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["dualtower plan: error: ValueError: an internal shape mismatch",
                   "dualtower plan: (run with --debug for the traceback)"]
    with pytest.raises(ValueError, match="internal shape mismatch"):
        main(["--debug", "plan", "tiny", "--batch", "8"])
    assert issubclass(UserError, ValueError)


def test_every_error_class_of_the_library_has_one_base():
    """Every exception class dualtower defines derives from DualtowerError (Ctrl-C's KeyboardInterrupt kinds
    aside), so `except DualtowerError` catches what the library raises on purpose."""
    import importlib
    import inspect
    import pkgutil

    import dualtower
    from dualtower.errors import DualtowerError

    skip = ("dualtower.compat.clip_benchmark",)  # imports CLIP_benchmark, an optional peer
    found = {}
    for info in pkgutil.walk_packages(dualtower.__path__, "dualtower."):
        if info.name.startswith(skip) or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == info.name:
                found[f"{info.name}.{name}"] = value
    assert len(found) >= 10, sorted(found)
    strays = [n for n, c in found.items() if not issubclass(c, (DualtowerError, KeyboardInterrupt))]
    assert not strays, strays


def test_export_takes_model_as_every_command_does_and_argument_errors_show_the_command_usage(tmp_path, capsys):
    """Issue 33, item 13: `export --model CKPT OUT` was refused with the top-level usage. It takes --model (the
    positional stays); an unknown argument of any command prints that command's usage."""
    assert main(["export", "--model", "tiny", str(tmp_path / "a")]) == 0
    assert main(["export", "tiny", str(tmp_path / "b")]) == 0
    assert {p.name for p in (tmp_path / "a").iterdir()} == {p.name for p in (tmp_path / "b").iterdir()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as raised:
        main(["export", "--model", "tiny", "tiny", str(tmp_path / "c")])
    assert raised.value.code == 2 and "give the model once" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["embed", "--model", "tiny", "--data", "builtin:digits:test", "--out", "x.npz", "--bogus"])
    err = capsys.readouterr().err
    assert "usage: dualtower embed" in err and "unrecognized arguments: --bogus" in err


def test_the_small_rough_edges_of_issue_33(tmp_path, capsys):
    """Issue 33, item 15: a default of 0 shows in the help; `convert --to timm` says it wrote the vision tower
    only; `--to onnx` points to `dualtower export`; `classify` names a bad file once; eval rows print in one
    format; `dualtower models` lists SigLIP 2."""
    from dualtower.cli import build_parser

    choices = build_parser()._subparsers._group_actions[0].choices
    assert "(default: 0)" in choices["demo"].format_help()  # --seed
    dualtower.save(dualtower.create_model("tiny"), tmp_path / "ckpt")
    assert main(["convert", str(tmp_path / "ckpt"), str(tmp_path / "tower.safetensors"), "--to", "timm"]) == 0
    assert "vision tower only" in capsys.readouterr().out
    assert main(["convert", str(tmp_path / "ckpt"), str(tmp_path / "x.onnx"), "--to", "onnx"]) == 2
    assert "dualtower export MODEL OUT" in capsys.readouterr().err
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    assert main(["classify", "--model", "tiny", "--labels", "a,b", str(tmp_path / "images")]) == 2
    err = capsys.readouterr().err
    assert err.count("broken.png") == 1 and "error:" in err, err
    assert main(["models"]) == 0
    assert "ViT-B-16-SigLIP2/webli" in capsys.readouterr().out


def test_eval_rows_print_in_one_format():
    from dualtower.eval.results import ClassificationResult

    result = ClassificationResult(0.98333, 1.0, 0.98, {}, [], [], 10)
    assert [f"{v:.4f}" for _, v in result.rows()] == ["0.9833", "1.0000", "0.9800"]


def test_embed_ids_of_a_captions_file_are_its_images_and_features_takes_a_folder(tmp_path, capsys):
    """Issue 33, item 15: `embed` of a captions file wrote ids "captions.csv:0", ...; they are the image paths as
    the file names them. `features` takes a folder, as `classify` does."""
    from dualtower.data import open_source

    digits = open_source("builtin:digits:test")
    (tmp_path / "img").mkdir()
    for i in range(3):
        digits.load(i).image.save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "captions.csv").write_text("image,caption\nimg/0.png,zero\nimg/1.png,one\nimg/2.png,two\n")
    assert main(["embed", "--model", "tiny", "--data", str(tmp_path / "captions.csv"), "--workers", "0",
                 "--out", str(tmp_path / "e.npz")]) == 0
    assert list(np.load(tmp_path / "e.npz")["ids"]) == ["img/0.png", "img/1.png", "img/2.png"]
    assert main(["features", "--model", "tiny", "--out", str(tmp_path / "f.safetensors"), str(tmp_path / "img")]) == 0
    assert "layer" in capsys.readouterr().out
    from safetensors import safe_open

    with safe_open(tmp_path / "f.safetensors", "np") as f:
        assert next(iter(f.keys())).startswith("layer") and f.get_tensor(next(iter(f.keys()))).shape[0] == 3
