"""Training in daily practice: the weights' moving average (train.ema_decay: its arithmetic, its own checkpoint
beside each training checkpoint, an exact resume) and TensorBoard logging."""

import shutil

import pytest

import torch

import dualtower
from dualtower import configtree
from dualtower.train.config import TrainConfig
from dualtower.train.loop import resume_config, train

ARGS = ["--model.arch=tiny", "--data.batch_size=16", "--train.log_every=1", "--train.progress=false",
        "--train.deterministic=true", "--data.workers=0", "--optim.warmup_steps=1", "--train.ema_decay=0.9"]


def _state(path):
    return dualtower.load(path).state_dict()


def test_ema_is_the_moving_average_and_a_checkpoint_of_its_own(tmp_path):
    train(configtree.load(TrainConfig, None, ARGS + ["--train.steps=1", f"--train.out={tmp_path / 'run'}"]))
    step = tmp_path / "run" / "checkpoints" / "step_000001"
    before, after, ema = dualtower.create_model("tiny", seed=0).state_dict(), _state(step), _state(step / "ema")
    for k in before:
        assert torch.allclose(ema[k], 0.9 * before[k] + 0.1 * after[k], rtol=1e-6, atol=1e-7), k  # to an ulp or two
    assert any(not torch.equal(ema[k], after[k]) for k in before)


def test_ema_resumes_exactly(tmp_path):
    run = tmp_path / "run"
    train(configtree.load(TrainConfig, None, ARGS + ["--train.steps=4", "--train.save_every=2",
                                                      "--train.keep_checkpoints=3", f"--train.out={run}"]))
    copy = tmp_path / "again"
    shutil.copytree(run, copy, symlinks=True)
    step_2 = str(copy / "checkpoints" / "step_000002")
    train(resume_config(step_2, []), resume=step_2)
    for name in ("", "ema"):
        a, b = _state(run / "checkpoints" / "latest" / name), _state(copy / "checkpoints" / "latest" / name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_tensorboard_gets_the_metrics_records(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(configtree.load(TrainConfig, None, ARGS + ["--train.steps=3", "--train.tensorboard=true",
                                                      f"--train.out={run}"]))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    import json

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert losses == [(r["step"], pytest.approx(r["loss"])) for r in records]  # one step count everywhere
    assert {"train/lr", "train/logit_scale", "train/samples_per_s", "train/skipped"} <= set(events.Tags()["scalars"])


def test_validation_during_training_keeps_the_best_and_the_last(tmp_path):
    """Zero-shot on held-out digits every 2 steps: logged with the step, a checkpoint at each, `best` never
    rotated away; retrieval metrics on captioned data; a resume continues the log and the best."""
    run = tmp_path / "run"
    args = ARGS + ["--train.steps=6", "--val.data=builtin:digits:test", "--val.every=2",
                   "--train.keep_checkpoints=1", "--train.tensorboard=true", "--optim.lr=0.01", f"--train.out={run}"]
    summary = train(configtree.load(TrainConfig, None, args))
    import json

    records = [json.loads(line) for line in (run / "val.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6] and all(0 <= r["top1"] <= 1 for r in records)
    best = max(records, key=lambda r: r["top1"])  # the first of equals
    assert summary["best"]["step"] == best["step"] and summary["best"]["value"] == best["top1"]
    checkpoints = run / "checkpoints"
    assert (checkpoints / "best").resolve().name == f"step_{best['step']:06d}"
    assert (checkpoints / "latest").resolve().name == "step_000006" and dualtower.load(checkpoints / "best")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/top1")] == [2, 4, 6]

    copy = tmp_path / "again"  # resumed from the best checkpoint: the same validations and the same best
    shutil.copytree(run, copy, symlinks=True)
    best_step = str((copy / "checkpoints" / "best").resolve())
    again = train(resume_config(best_step, []), resume=best_step)
    assert (copy / "val.jsonl").read_text() == (run / "val.jsonl").read_text()
    assert again["best"]["step"] == summary["best"]["step"]

    bad = ARGS + ["--train.steps=2", "--val.data=builtin:digits:test", "--val.metric=R@1",
                  f"--train.out={tmp_path / 'x'}"]
    with pytest.raises(ValueError, match="not a zeroshot metric"):
        train(configtree.load(TrainConfig, None, bad))


def test_retrieval_validation(tmp_path):
    import json

    data = tmp_path / "captions.jsonl"
    from PIL import Image

    for i in range(12):
        Image.new("RGB", (40, 40), (20 * i, 100, 255 - 20 * i)).save(tmp_path / f"{i}.png")
    data.write_text("".join(json.dumps({"image": f"{i}.png", "caption": f"colour number {i}"}) + "\n"
                            for i in range(12)))
    run = tmp_path / "run"
    summary = train(configtree.load(TrainConfig, None, ARGS + ["--train.steps=2", f"--val.data={data}",
                                                                f"--train.out={run}"]))
    record = json.loads((run / "val.jsonl").read_text())
    assert {"image_to_text/R@1", "text_to_image/R@5", "mean_R@1"} <= set(record)
    assert summary["best"]["metric"] == "mean_R@1"


def test_every_record_counts_steps_the_same_way(tmp_path):
    """metrics.jsonl and val.jsonl said 1, 3, ... where the console, TensorBoard, checkpoint names and summary.json
    said 2, 4, ...: every record now names the completed-step count (issue 33, item 2)."""
    import json

    run = tmp_path / "run"
    args = ARGS + ["--train.steps=4", "--train.save_every=2", "--train.log_every=2", "--train.keep_checkpoints=5",
                   "--val.data=builtin:digits:test", "--val.every=2", f"--train.out={run}"]
    summary = train(configtree.load(TrainConfig, None, args))
    for name in ("metrics.jsonl", "val.jsonl"):
        assert [json.loads(line)["step"] for line in (run / name).read_text().splitlines()] == [2, 4], name
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000002", "step_000004"]
    assert summary["steps"] == 4 and summary["best"]["step"] in (2, 4)


def test_the_space_form_of_overrides_needs_no_config_file(tmp_path, capsys):
    """`dualtower train --train.out runs/x --train.steps 10` read runs/x as the CONFIG file (issue 33, item 3)."""
    from dualtower.cli import main

    run = tmp_path / "x"
    argv = ["train", "--train.out", str(run), "--train.steps", "2", "--model.arch", "tiny", "--data.batch_size",
            "16", "--data.workers", "0", "--train.progress", "false"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (run / "checkpoints" / "step_000002").is_dir()
    assert main(["--debug", "archs"]) == 0  # options without a dot are the parser's, as before
