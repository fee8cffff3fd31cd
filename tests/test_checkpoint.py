"""Our checkpoint format: bit-exact round trip, atomic replacement, refusal of bad and unsafe files."""

import json
import os
import pickle

import pytest
import torch

import dualtower
from dualtower import checkpoint
from dualtower.checkpoint import CheckpointError


def _equal_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("arch", ["tiny", "tiny-post-rms", "tiny-ls-mean"])
def test_save_load_round_trip_is_bit_exact(tmp_path, arch):
    model = dualtower.create_model(arch, seed=1)
    dualtower.save(model, tmp_path / "ckpt")
    loaded = dualtower.load(tmp_path / "ckpt")
    assert loaded.cfg == model.cfg
    assert _equal_state(model, loaded)
    pixels, ids = torch.randn(2, 3, model.cfg.vision.image_size, model.cfg.vision.image_size), \
        dualtower.get_tokenizer(model)(["a", "b c"])
    with torch.no_grad():
        assert torch.equal(model(pixels, ids).logits_per_image, loaded(pixels, ids).logits_per_image)


def test_crash_mid_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    good = dualtower.create_model("tiny", seed=1)
    dualtower.save(good, tmp_path / "ckpt")
    import safetensors.torch

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        dualtower.save(dualtower.create_model("tiny", seed=2), tmp_path / "ckpt")
    monkeypatch.undo()
    assert _equal_state(good, dualtower.load(tmp_path / "ckpt"))
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary directory left behind


def test_save_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        dualtower.save(dualtower.create_model("tiny"), tmp_path / "photos")
    assert (tmp_path / "photos" / "holiday.jpg").read_bytes() == b"precious"


class _Payload:
    """Unpickling this creates a file: the kind of code a malicious checkpoint runs."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "open_clip_model.bin"
    torch.save({"visual.proj": _Payload(str(marker))}, evil)
    with open(evil, "rb") as f:  # the file really is armed: plain unpickling would create the marker
        assert b"pwned" in f.read()
    with pytest.raises(CheckpointError, match="refused"):
        dualtower.load(evil, arch="tiny")
    assert not marker.exists()
    with open(tmp_path / "plain.pt", "wb") as f:
        pickle.dump(_Payload(str(marker)), f)
    with pytest.raises(CheckpointError, match="refused"):
        dualtower.load(tmp_path / "plain.pt", arch="tiny")
    assert not marker.exists()


def test_bad_checkpoints_are_refused_before_anything_runs(tmp_path):
    model = dualtower.create_model("tiny")
    dualtower.save(model, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "config.json").read_text())

    meta["model"]["vision"]["width"] = 96
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        dualtower.load(tmp_path / "ckpt")

    meta["model"]["vision"]["width"] = 64
    meta["model"]["vision"]["colour"] = "red"
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="colour"):
        dualtower.load(tmp_path / "ckpt")

    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        dualtower.load(tmp_path / "ckpt")

    dualtower.save(model, tmp_path / "ckpt")
    weights = tmp_path / "ckpt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        dualtower.load(tmp_path / "ckpt")


def test_bare_state_dict_needs_arch_and_unmatched_keys_are_named(tmp_path):
    model = dualtower.create_model("tiny")
    path = tmp_path / "model.safetensors"
    checkpoint.export_open_clip(model, path)
    with pytest.raises(CheckpointError, match="arch="):
        dualtower.load(path)
    state = checkpoint.read_state_file(path)
    state["visual.mystery"] = torch.zeros(1)
    from safetensors.torch import save_file

    save_file(state, path)
    with pytest.raises(CheckpointError, match="visual.mystery"):
        dualtower.load(path, arch="tiny")
    del state["visual.mystery"], state["visual.proj"]
    save_file(state, path)
    with pytest.raises(CheckpointError, match="visual.proj"):
        dualtower.load(path, arch="tiny")
