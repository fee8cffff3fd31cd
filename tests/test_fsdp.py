"""FSDP2 training on CPU with gloo, 2 processes: one sharded step equals a DDP step and a single-process step on
the same global batch; per-process parameter and optimizer memory about halves; sharded checkpoints resume
exactly on the same world size and continue the same loss curve on another; `dualtower load` and `convert` read
them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dualtower

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
COMMON = ["--model.arch=tiny", "--data.batch_size=16", "--train.log_every=1", "--train.progress=false",
          "--train.deterministic=true", "--data.workers=0"]


def _torchrun(processes: int) -> list[str]:
    """torchrun on a port free now (a fixed one collides with any other run on the machine)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [TORCHRUN, f"--nproc_per_node={processes}", "--master_addr=127.0.0.1", f"--master_port={port}"]


def _train(args, processes: int = 1):
    launcher = [*_torchrun(processes), "-m", "dualtower"] if processes > 1 else [sys.executable, "-m", "dualtower"]
    out = subprocess.run([*launcher, "train", *args], capture_output=True, text=True, env=ENV, cwd=ROOT,
                         timeout=300)
    # a failure shows how each rank began and ended (a rank that aborts prints its own lines before torchrun's)
    assert out.returncode == 0, f"{out.stderr[:3000]}\n...\n{out.stderr[-4000:]}\nstdout: {out.stdout[-1500:]}"
    return out


def _losses(run):
    return [json.loads(line)["loss"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def test_one_fsdp_step_equals_a_ddp_step_and_a_single_process_step(tmp_path):
    """AdamW's first step divides each gradient by its own magnitude, so a rounding-level gradient difference
    can flip a near-zero coordinate's whole update; with eps=1 the update is linear in the gradient and the
    comparison measures the step itself: gathered loss, gradient reduction (all-reduce vs reduce-scatter),
    clipping and the update."""
    step = COMMON + ["--train.steps=1", "--optim.warmup_steps=0", "--optim.eps=1.0", "--optim.lr=0.5"]
    _train(step + [f"--train.out={tmp_path / 'single'}"])
    _train(step + [f"--train.out={tmp_path / 'ddp'}"], processes=2)
    _train(step + [f"--train.out={tmp_path / 'fsdp'}", "--train.parallel=fsdp"], processes=2)
    runs = {name: dualtower.load(tmp_path / name).state_dict() for name in ("single", "ddp", "fsdp")}
    before = dualtower.create_model("tiny", seed=0).state_dict()
    for a, b in (("fsdp", "single"), ("ddp", "single"), ("fsdp", "ddp")):
        worst = max(float((runs[a][k] - runs[b][k]).abs().max() / runs[b][k].abs().max()) for k in before
                    if runs[b][k].abs().max() > 0)
        assert worst <= 1e-5, (a, b, worst)
        print(f"{a} vs {b}: parameters after one step, max rel diff {worst:.1e}")
    moved = sum(int((runs["fsdp"][k] != before[k]).any()) for k in before)
    assert moved >= len(before) - 2  # the step really moved (nearly) every tensor


def test_fsdp_about_halves_parameter_and_optimizer_memory_per_process(tmp_path):
    def measure(parallel):
        out = subprocess.run([*_torchrun(2), str(ROOT / "tests/helpers/fsdp_memory.py"), parallel, str(tmp_path)],
                             capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=300)
        assert out.returncode == 0, f"{out.stderr[:3000]}\n...\n{out.stderr[-4000:]}"
        return {rank: json.loads((tmp_path / f"rank{rank}.json").read_text())["bytes"] for rank in (0, 1)}

    ddp, fsdp = measure("ddp"), measure("fsdp")
    for rank in (0, 1):
        ratio = fsdp[rank] / ddp[rank]
        print(f"rank {rank}: parameters + optimizer state {ddp[rank] / 2**20:.2f} MB (ddp) -> "
              f"{fsdp[rank] / 2**20:.2f} MB (fsdp), {ratio:.3f}x")
        assert 0.49 <= ratio <= 0.52, ratio


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fsdp") / "full"
    _train(COMMON + ["--train.steps=6", "--train.save_every=2", "--train.keep_checkpoints=5",
                     "--optim.warmup_steps=2", "--train.parallel=fsdp", f"--train.out={run}"], processes=2)
    return run


def _resume(run, copy_to, processes):
    import shutil

    shutil.copytree(run, copy_to, symlinks=True)
    _train([f"--resume={copy_to / 'checkpoints' / 'step_000002'}", "--train.progress=false"], processes)
    return _losses(copy_to)


def test_sharded_checkpoints_resume_exactly_on_the_same_world_size(fsdp_run, tmp_path):
    assert not (fsdp_run / "checkpoints" / "step_000002" / "model.safetensors").exists()
    sharded = fsdp_run / "checkpoints" / "step_000002" / "sharded"
    assert (sharded / "metadata.json").is_file() and not (sharded / ".metadata").exists()  # no pickle (issue 26)
    assert _resume(fsdp_run, tmp_path / "again", 2) == _losses(fsdp_run)  # bitwise


@pytest.mark.slow
def test_sharded_checkpoints_resume_on_another_world_size(fsdp_run, tmp_path):
    """2 processes -> 1: the same loss curve within float tolerance (the reductions' order differs). 1 -> 2 as
    well, from a single-process sharded run."""
    full = _losses(fsdp_run)
    one = _resume(fsdp_run, tmp_path / "one", 1)
    assert one[:2] == full[:2] and max(abs(a - b) / abs(b) for a, b in zip(one, full)) <= 1e-5
    single = tmp_path / "single"
    _train(COMMON + ["--train.steps=4", "--train.save_every=2", "--train.keep_checkpoints=5",
                     "--optim.warmup_steps=2", "--train.parallel=fsdp", f"--train.out={single}"])
    two = _resume(single, tmp_path / "two", 2)
    assert max(abs(a - b) / abs(b) for a, b in zip(two, _losses(single))) <= 1e-5
    print(f"loss curves, max rel diff: 2 -> 1 processes "
          f"{max(abs(a - b) / abs(b) for a, b in zip(one, full)):.1e}, 1 -> 2 "
          f"{max(abs(a - b) / abs(b) for a, b in zip(two, _losses(single))):.1e}")


def test_a_sharded_checkpoint_loads_and_converts_to_one_file(fsdp_run, tmp_path):
    model = dualtower.load(fsdp_run)  # the run's latest checkpoint, gathered into this one process
    out = subprocess.run([sys.executable, "-m", "dualtower", "convert", str(fsdp_run / "checkpoints" / "latest"),
                          str(tmp_path / "single")], capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "single" / "model.safetensors").is_file()
    converted = dualtower.load(tmp_path / "single")
    assert all(torch.equal(a, b) for a, b in zip(converted.state_dict().values(), model.state_dict().values()))
    ids = dualtower.get_tokenizer(model)(["a photo"])
    with torch.no_grad():
        assert torch.equal(converted.encode_text(ids), model.encode_text(ids))


@pytest.mark.slow
def test_fsdp_with_gradient_cache_chunked_loss_lit_and_patch_dropout_equals_ddp(tmp_path):
    """The training options compose with sharding: gradient-cache micro-batches, the chunked sigmoid loss, a
    locked image tower (LiT), patch dropout, dropout and gradient checkpointing; two steps, the same weights as
    DDP's; and validation (encode_image / encode_text on the sharded towers) gives DDP's metrics."""
    args = COMMON + ["--train.steps=2", "--optim.warmup_steps=0", "--optim.eps=1.0", "--optim.lr=0.5",
                     "--train.micro_batch=3", "--train.loss_chunk=5", "--train.loss=siglip", "--model.lock_image=true",
                     "--model.patch_dropout=0.3", "--model.dropout=0.1", "--model.grad_checkpointing=true",
                     "--val.data=builtin:digits:test"]
    _train(args + [f"--train.out={tmp_path / 'ddp'}"], processes=2)
    _train(args + [f"--train.out={tmp_path / 'fsdp'}", "--train.parallel=fsdp"], processes=2)
    ddp, fsdp = (dualtower.load(tmp_path / n).state_dict() for n in ("ddp", "fsdp"))
    worst = max(float((fsdp[k] - ddp[k]).abs().max() / ddp[k].abs().max()) for k in ddp if ddp[k].abs().max() > 0)
    assert worst <= 1e-5, worst
    val = [json.loads((tmp_path / n / "val.jsonl").read_text()) for n in ("ddp", "fsdp")]
    assert val[0] == pytest.approx(val[1], abs=1e-9)
    before = dualtower.create_model("tiny", seed=0).state_dict()
    assert all(torch.equal(fsdp[k], before[k]) for k in before if k.startswith("visual."))  # locked
    assert not all(torch.equal(fsdp[k], before[k]) for k in before if k.startswith("text."))


@pytest.mark.slow
def test_hsdp_on_four_processes_equals_ddp(tmp_path):
    """HSDP: sharded within groups of 2 processes, replicated across the 2 groups; two steps, DDP's weights."""
    args = COMMON + ["--train.steps=2", "--optim.warmup_steps=0", "--optim.eps=1.0", "--optim.lr=0.5",
                     "--train.save_every=1", "--train.keep_checkpoints=3"]
    _train(args + [f"--train.out={tmp_path / 'ddp'}"], processes=4)
    _train(args + [f"--train.out={tmp_path / 'hsdp'}", "--train.parallel=hsdp", "--train.shard_size=2"],
           processes=4)
    ddp, hsdp = (dualtower.load(tmp_path / n).state_dict() for n in ("ddp", "hsdp"))
    worst = max(float((hsdp[k] - ddp[k]).abs().max() / ddp[k].abs().max()) for k in ddp if ddp[k].abs().max() > 0)
    assert worst <= 1e-5, worst
    assert len(list((tmp_path / "hsdp" / "checkpoints" / "latest" / "sharded").glob("*.distcp"))) == 4


@pytest.mark.slow
def test_resume_between_ddp_and_fsdp(fsdp_run, tmp_path):
    """A DDP checkpoint resumed with FSDP (its optimizer state re-keyed by parameter name and sharded), and a
    sharded checkpoint resumed with DDP: the same loss curve as the uninterrupted runs."""
    ddp = tmp_path / "ddp"
    _train(COMMON + ["--train.steps=6", "--train.save_every=2", "--train.keep_checkpoints=5",
                     "--optim.warmup_steps=2", f"--train.out={ddp}"], processes=2)
    for run, other, name in ((ddp, "fsdp", "to_fsdp"), (fsdp_run, "ddp", "to_ddp")):
        import shutil

        copy = tmp_path / name
        shutil.copytree(run, copy, symlinks=True)
        _train([f"--resume={copy / 'checkpoints' / 'step_000002'}", f"--train.parallel={other}",
                "--train.progress=false"], 2)
        resumed, full = _losses(copy), _losses(run)
        assert max(abs(a - b) / abs(b) for a, b in zip(resumed, full)) <= 1e-5, name
        sharded = (copy / "checkpoints" / "step_000006" / "sharded").is_dir()
        assert sharded == (other == "fsdp")
