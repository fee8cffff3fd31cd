"""Our checkpoint format: bit-exact round trip, atomic replacement, refusal of bad and unsafe files."""

import json
import os
import pickle

import pytest
import torch

import dualtower
from dualtower import convert
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

    meta["model"]["vision"]["block"]["width"] = 96  # version 2: block fields nested
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="wrong shapes"):
        dualtower.load(tmp_path / "ckpt")

    meta["model"]["vision"]["block"]["width"] = 64
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
    convert.export(model, path, "open_clip")
    with pytest.raises(CheckpointError, match="arch="):
        dualtower.load(path)
    state = convert.read_state_file(path)
    state["visual.mystery"] = torch.zeros(1)
    from safetensors.torch import save_file

    save_file(state, path)
    with pytest.raises(CheckpointError, match="visual.mystery"):
        dualtower.load(path, arch="tiny")
    del state["visual.mystery"], state["visual.proj"]
    save_file(state, path)
    with pytest.raises(CheckpointError, match="visual.proj"):
        dualtower.load(path, arch="tiny")


DATA = os.path.join(os.path.dirname(__file__), "data")


def test_a_version_1_checkpoint_still_loads_with_its_outputs(tmp_path):
    """tests/data/checkpoint-v1 was written by the version-1 writer (block fields flat in each tower), with its
    outputs on fixed inputs beside it. The claim is that reading version 1 changes nothing: it loads to the config
    and weights that today's writer gives the same model (version 2, written here from the same weights and the
    config with its block fields nested by hand), with bit-identical outputs on this machine. The outputs recorded
    beside it came from another processor, whose fp32 kernels sum products in another order: they agree within the
    parity tolerance (conftest.RTOL), not bit for bit (an AVX-512 Xeon or Zen 4 differs from the AVX2 EPYC that
    wrote them by about 3e-7)."""
    from safetensors.torch import load_file

    from .conftest import assert_close
    from dualtower.config import BLOCK_FIELDS, ModelConfig
    from dualtower.model import DualEncoder

    old = json.loads(open(os.path.join(DATA, "checkpoint-v1", "config.json")).read())
    assert old["version"] == 1 and "norm" in old["model"]["vision"]
    model = dualtower.load(os.path.join(DATA, "checkpoint-v1"))
    assert model.cfg.vision.norm == "rmsnorm" and model.cfg.vision.post_norm and model.cfg.text.vocab_size == 300

    nested = json.loads(json.dumps(old["model"]))
    for tower in ("vision", "text"):
        nested[tower]["block"] = {k: nested[tower].pop(k) for k in BLOCK_FIELDS if k in nested[tower]}
    today = DualEncoder(ModelConfig.from_dict(nested, version=2))
    today.load_state_dict(load_file(os.path.join(DATA, "checkpoint-v1", "model.safetensors")))
    dualtower.save(today, tmp_path / "today")
    today = dualtower.load(tmp_path / "today")
    assert today.cfg == model.cfg and _equal_state(today, model)

    want = load_file(os.path.join(DATA, "checkpoint-v1-outputs.safetensors"))
    with torch.no_grad():
        for name, run in (("image_embeds", lambda m: m.encode_image(want["pixels"])),
                          ("text_embeds", lambda m: m.encode_text(want["ids"])),
                          ("logits", lambda m: m(want["pixels"], want["ids"]).logits_per_image)):
            assert torch.equal(run(model), run(today)), name  # the same computation on this machine
            assert_close(run(model), want[name], f"{name} against the recorded outputs")
    dualtower.save(model, tmp_path / "v2")
    new = json.loads((tmp_path / "v2" / "config.json").read_text())
    assert new["version"] == 2 and new["model"]["vision"]["block"]["norm"] == "rmsnorm"
    assert "norm" not in new["model"]["vision"] and new["model"]["text"]["block"]["width"] == 32
    assert dualtower.load(tmp_path / "v2").cfg == model.cfg

    new["model"]["text"]["block"]["colour"] = "red"
    (tmp_path / "v2" / "config.json").write_text(json.dumps(new))
    with pytest.raises(CheckpointError, match="block has unknown keys .'colour'"):
        dualtower.load(tmp_path / "v2")
    new["version"] = 3
    (tmp_path / "v2" / "config.json").write_text(json.dumps(new))
    with pytest.raises(CheckpointError, match="version 3 is not supported"):
        dualtower.load(tmp_path / "v2")


def test_block_fields_are_defined_and_checked_once():
    from dataclasses import fields

    from dualtower.config import BLOCK_FIELDS, BlockConfig, TextConfig, VisionConfig

    assert len(BLOCK_FIELDS) == 17
    for tower in (VisionConfig, TextConfig):
        assert issubclass(tower, BlockConfig)
        assert [f.name for f in fields(tower)][:17] == list(BLOCK_FIELDS)
    with pytest.raises(ValueError, match="text act 'relu'"):
        TextConfig(act="relu")
    with pytest.raises(ValueError, match="vision width 100 is not divisible by heads 12"):
        VisionConfig(width=100)


def test_a_run_directory_stands_for_its_latest_checkpoint(tmp_path):
    from dualtower.rundir import RunDir, resolve

    run = RunDir(tmp_path / "run")
    for step, seed in ((2, 1), (4, 2), (6, 3)):
        dualtower.save(dualtower.create_model("tiny", seed=seed), run.step(step))
        run.publish(run.step(step), keep=2)
    assert [p.name for p in run.steps()] == ["step_000004", "step_000006"]  # the oldest pruned
    latest = run.checkpoints / "latest"
    assert latest.is_symlink() and os.readlink(latest) == "step_000006"
    want = dualtower.create_model("tiny", seed=3)
    for given in (run.root, run.checkpoints, latest):
        assert resolve(given) == run.step(6)
        assert _equal_state(dualtower.load(given), want)
    # Where there are no symlinks, `latest` is a file naming the checkpoint; runs written so are still read.
    latest.unlink()
    latest.write_text("step_000004\n")
    assert resolve(run.root) == run.step(4) and resolve(latest) == run.step(4)
    latest.write_text("step_000099\n")
    with pytest.raises(FileNotFoundError, match="names no complete checkpoint"):
        dualtower.load(run.root)


def test_loaded_weights_sit_in_aligned_memory(tmp_path):
    """A tensor read from a safetensors file can sit at any 8-byte offset, and matrix products round differently
    on memory of another alignment: loaded weights are copied to torch's 64-byte-aligned memory where needed, so
    a resumed run computes what the uninterrupted one did (tests/test_naflex_train.py resumes a MAP-pooled tower,
    which the misaligned weights threw off by an ulp)."""
    model = dualtower.create_model("tiny-post-rms", seed=1)
    dualtower.save(model, tmp_path / "ckpt")
    loaded = dualtower.load(tmp_path / "ckpt")
    assert all(p.data_ptr() % 64 == 0 for p in loaded.parameters())
    assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), model.parameters()))
