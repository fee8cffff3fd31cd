"""The train loop: exact resume after SIGKILL, torchrun with 2 processes, a dying rank, configs, bad steps."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import dualtower
from dualtower import configtree
from dualtower.train.config import TrainConfig
from dualtower.train.loop import TrainingError, train

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
FAST = ["--model.arch=tiny", "--data.batch_size=32", "--train.log_every=1", "--train.progress=false",
        "--optim.warmup_steps=3"]


def _run(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dualtower", "train", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, **kw)


def _losses(out):
    return {r["step"]: r["loss"] for r in map(json.loads, (Path(out) / "metrics.jsonl").read_text().splitlines())}


def _samples(out, rank=0):
    lines = (Path(out) / f"samples.rank{rank}.jsonl").read_text().splitlines()
    return {r["step"]: r["ids"] for r in map(json.loads, lines)}


def test_resume_after_sigkill_is_exact(tmp_path):
    steps = 24
    common = FAST + [f"--train.steps={steps}", "--train.save_every=3", "--train.deterministic=true",
                     "--train.log_samples=true", "--model.patch_dropout=0.25", "--data.workers=1"]
    full = tmp_path / "full"
    assert _run(common + [f"--train.out={full}"], check=True).returncode == 0

    killed = tmp_path / "killed"
    kill_after = random.Random().randint(4, 16)  # at least 8 steps before the end: the kill lands mid-run
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "dualtower", "train", *common, f"--train.out={killed}"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) > kill_after:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"

    resumed = _run([f"--resume={killed}", "--train.progress=false"])
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step" in resumed.stdout
    assert _losses(killed) == _losses(full)  # bitwise: the floats are equal, not close
    assert _samples(killed) == _samples(full)  # each remaining sample seen exactly once, in the same order
    for name in ("metrics.jsonl", "samples.rank0.jsonl"):  # and each step recorded once: none left twice
        steps_logged = [json.loads(ln)["step"] for ln in (killed / name).read_text().splitlines()]
        assert steps_logged == [json.loads(ln)["step"] for ln in (full / name).read_text().splitlines()], name
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["data"]["seen"] == summary["data"]["accepted"] == steps * 32


def test_torchrun_two_processes_split_the_data(tmp_path):
    out = tmp_path / "run"
    cmd = [TORCHRUN, "--nproc_per_node=2", "--master_port", str(29500 + random.randint(0, 400)), "-m", "dualtower",
           "train", *FAST, "--train.steps=4", "--train.log_samples=true", "--data.workers=0", f"--train.out={out}"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Warning" not in done.stderr, done.stderr[-3000:]  # issue 33, item 15: no per-rank deprecation notice
    r0, r1 = _samples(out, 0), _samples(out, 1)
    for step in range(1, 5):  # the completed-step count, as every record names it
        assert len(r0[step]) == len(r1[step]) == 16
        assert not set(r0[step]) & set(r1[step])
    assert dualtower.load(out / "checkpoints" / "step_000004").cfg.name == "tiny"


def test_a_dying_rank_does_not_leave_the_other_hanging(tmp_path):
    cmd = [TORCHRUN, "--nproc_per_node=2", "--master_port", str(29900 + random.randint(0, 90)),
           str(ROOT / "tests" / "helpers" / "dying_rank.py"), *FAST, "--train.steps=50", "--data.workers=0",
           "--train.dist_timeout_s=30", f"--train.out={tmp_path / 'run'}"]
    start = time.time()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0
    assert time.time() - start < 120
    assert "exitcode" in done.stderr and "17" in done.stderr  # torchrun names the failed rank and its exit code


def test_non_finite_steps_are_skipped_then_abort(tmp_path, monkeypatch):
    import dualtower.train.objective as objective

    monkeypatch.setattr(objective, "clip_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    cfg = configtree.load(TrainConfig, None, FAST + ["--train.steps=10", "--train.max_nonfinite=3",
                                                     "--data.workers=0", f"--train.out={tmp_path}"])
    with pytest.raises(TrainingError, match="3 non-finite steps in a row"):
        train(cfg)


def test_unknown_config_keys_are_errors(tmp_path):
    with pytest.raises(ValueError, match="train.stepz"):
        configtree.load(TrainConfig, None, ["--train.stepz=3"])
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\nsteps = 7\n[optim]\nlr = 0.01\n[model]\narch = "tiny"\ncolour = "red"\n')
    with pytest.raises(ValueError, match="model.colour"):
        configtree.load(TrainConfig, toml, [])
    toml.write_text('[train]\nsteps = 7\n[optim]\nlr = 0.01\n')
    cfg = configtree.load(TrainConfig, toml, ["--train.steps=9"])
    assert cfg.train.steps == 9 and cfg.optim.lr == 0.01
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("train:\n  steps: 11\n  loss: siglip\ndata:\n  batch_size: 64\n")
    cfg = configtree.load(TrainConfig, yaml_file, [])
    assert (cfg.train.steps, cfg.train.loss, cfg.data.batch_size) == (11, "siglip", 64)
    with pytest.raises(ValueError, match="must be an integer"):
        configtree.load(TrainConfig, None, ["--train.steps=many"])


def test_siglip_lit_and_bf16_train(tmp_path):
    cfg = configtree.load(TrainConfig, None, FAST + [
        "--train.steps=3", "--train.loss=siglip", "--model.lock_image=true", "--train.precision=bf16",
        "--model.grad_checkpointing=true", "--data.workers=0", f"--train.out={tmp_path}"])
    before = dualtower.create_model("tiny", seed=0).visual.state_dict()
    summary = train(cfg)
    model = dualtower.load(summary["checkpoint"])
    assert model.logit_bias is not None
    after = model.visual.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the locked tower did not move
    assert (tmp_path / "loss.png").stat().st_size > 0


def test_daily_practice_resume_refuses_a_new_end_and_logs_read_well_in_files(tmp_path):
    """A finished run cannot be extended by --train.steps (its schedule decayed to zero there); a log file gets
    plain lines, not a progress bar; the summary says how many steps this invocation trained; a run started with
    a relative out is saved absolute and resumes from another working directory."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "dualtower", "train", *FAST, "--train.progress=true",
                           "--train.steps=4", "--train.save_every=2", "--data.workers=0", "--train.out=run"],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr and "step 4/4  loss" in done.stdout and "trained 4 steps" in done.stdout
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step_000004" / "train_config.json").read_text())
    assert saved["train"]["out"] == str(tmp_path / "run") and saved["data"]["train"] == "builtin:digits"
    refused = _run([f"--resume={tmp_path / 'run' / 'checkpoints' / 'step_000002'}", "--train.steps=8"])
    assert refused.returncode == 2 and "train.steps cannot change on resume" in refused.stderr
    assert "Traceback" not in refused.stderr
    again = _run([f"--resume={tmp_path / 'run' / 'checkpoints' / 'step_000002'}"])  # from another directory
    assert again.returncode == 0 and "trained 2 steps" in again.stdout and "now at 4" in again.stdout, again.stderr
    assert not (ROOT / "run").exists()
    warned = _run(FAST + ["--train.steps=2", "--optim.warmup_steps=5", "--data.workers=0",
                          f"--train.out={tmp_path / 'short'}"])
    assert warned.returncode == 0 and "smaller than optim.warmup_steps" in warned.stderr


@pytest.mark.slow  # three training processes, about 30 s each signal
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_the_step_and_the_run_resumes_exactly(tmp_path, signame):
    """Ctrl-C (or SIGTERM) at a moment between saves: the step in flight finishes, a checkpoint of it is saved,
    the command says where and how to resume and exits 130 (143); --resume then ends where an uninterrupted run
    ends, bit for bit. (Before: "interrupted", no checkpoint, the steps lost.)"""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from safetensors.torch import load_file

    steps = 60  # long enough to be caught between two steps
    args = ["--model.arch=tiny", "--data.batch_size=8", "--data.workers=0", f"--train.steps={steps}",
            "--train.save_every=0", "--train.progress=false", "--train.log_every=1"]
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "dualtower.cli", "train", *args, f"--train.out={tmp_path / 'a'}"],
                            cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, deadline = tmp_path / "a" / "metrics.jsonl", time.monotonic() + 120
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 5):  # a few steps in
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(getattr(signal, signame))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if signame == "SIGINT" else 143), err
    assert "Traceback" not in err and f"resume with: dualtower train --resume {tmp_path / 'a'}" in err, err
    saved = sorted((tmp_path / "a" / "checkpoints").glob("step_*"))
    assert len(saved) == 1 and 5 <= int(saved[0].name.split("_")[1]) < steps, saved
    # the resume and the uninterrupted run in fresh processes too: bit-exactness is a claim about the same
    # computation in the same environment (this process's thread settings may differ after other tests)
    for argv in ([f"--resume={tmp_path / 'a'}"], [*args, f"--train.out={tmp_path / 'b'}"]):
        done = subprocess.run([sys.executable, "-m", "dualtower.cli", "train", *argv], cwd=root, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    a, b = (load_file(tmp_path / r / "checkpoints" / f"step_{steps:06d}" / "model.safetensors") for r in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_logged_to_a_file_says_what_it_trains_and_the_time_left(tmp_path, capsys):
    """Issue 33, item 15: with stdout not a terminal (a log file, the demo under CI) nothing was printed until the
    first metrics line. A first line says what runs and where; every line gives the time left."""
    cfg = configtree.load(TrainConfig, None, FAST + ["--train.steps=4", "--train.log_every=2", "--train.progress=true",
                                                     "--data.workers=0", f"--train.out={tmp_path}"])
    train(cfg)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"train: steps 1 to 4 into {tmp_path}; a line every 2 steps with the time left"
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["2/4", "4/4"] and all(" left " in s for s in steps)
    assert steps[-1].endswith("left 0m00s")
