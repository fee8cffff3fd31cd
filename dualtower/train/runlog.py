"""The bookkeeping beside the train loop: metrics, the progress bar, the sample log, skipped samples and
non-finite steps, and the run's summary. The loop calls it; it never changes what the loop computes."""

from __future__ import annotations

import json
import logging
import sys
import time

import torch

from ..data import SkipStats
from ..io import write_json, write_text
from ..rundir import RunDir
from .errors import TrainingError

log = logging.getLogger("dualtower.train")


def _append_from(path, start: int):
    """Open `path` for appending, first dropping what a killed run wrote past its checkpoint: records of a step
    after `start` (records name the completed-step count, as the console, checkpoints and TensorBoard do: the
    checkpoint of `start` completed steps covers records 1..start), and a line the kill cut short. The file is
    rewritten atomically."""
    if path.exists():
        kept = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= start:
                kept.append(line)
        write_text(path, "".join(ln + "\n" for ln in kept))
    return open(path, "a", encoding="utf-8")


class RunLog:
    def __init__(self, run: RunDir, t, d, start: int):
        self.run, self.t, self.d, self.start = run, t, d, start
        self.stats = SkipStats()
        self.nonfinite_total, self.nonfinite_run = 0, 0
        run.root.mkdir(parents=True, exist_ok=True)
        self.metrics = _append_from(run.file("metrics.jsonl"), start) if d.main else None
        self.val = _append_from(run.file("val.jsonl"), start) if d.main and run.file("val.jsonl").exists() \
            else None  # opened at the first validation
        self.best: dict | None = None  # {"step", "metric", "value"} of the best validation so far
        self.samples = _append_from(run.samples_file(d.rank), start) if t.log_samples else None
        self.progress, self.plain = None, False
        if d.main and t.progress:
            if sys.stderr.isatty():
                from tqdm import tqdm

                self.progress = tqdm(total=t.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)
            else:  # a log file: one plain line per metrics record instead of a bar redrawn with carriage returns
                self.plain = True
                print(f"train: steps {start + 1} to {t.steps} into {run.root}; a line every {t.log_every} steps "
                      "with the time left", flush=True)
        self.window_start, self.window_samples = time.perf_counter(), 0
        self.run_start = time.perf_counter()
        self.board = None  # TensorBoard (train.tensorboard): the same records, as scalars of RUN/tensorboard
        if d.main and t.tensorboard:
            from ..errors import require

            require("tensorboard", "train.tensorboard", "train")
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: on resume, events past the checkpoint (a killed run's) are dropped, as in metrics.jsonl
            self.board = SummaryWriter(str(run.root / "tensorboard"), purge_step=start + 1 if start else None)

    def state(self) -> dict:
        """What a checkpoint keeps of the bookkeeping."""
        return {"data": self.stats.state(), "nonfinite": self.nonfinite_total,
                **({"best": dict(self.best)} if self.best else {})}

    def restore(self, state: dict) -> None:
        self.stats.restore(state["data"])
        self.nonfinite_total = int(state["nonfinite"])
        self.best = dict(state["best"]) if "best" in state else None

    def validation(self, step: int, metrics: dict, metric: str) -> bool:
        """A validation's metrics, logged with the step index (val.jsonl, TensorBoard, a line); True when
        `metric` is the best so far (higher is better; the first validation is the best)."""
        value = float(metrics[metric])
        best = self.best is None or value > self.best["value"]
        if best:
            self.best = {"step": step + 1, "metric": metric, "value": value}
        if self.val is None and self.d.main:
            self.val = _append_from(self.run.file("val.jsonl"), self.start)
        if self.val is not None:
            self.val.write(json.dumps({"step": step + 1, **metrics}) + "\n")
            self.val.flush()
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            print(f"validation at step {step + 1}: {shown}{'  (best ' + metric + ')' if best else ''}", flush=True)
        self.scalars(step + 1, {f"val/{k}": v for k, v in metrics.items()})
        return best

    def batch(self, batch) -> None:
        self.stats.add(len(batch), batch.skips)

    def update_skipped(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """A non-finite loss or gradient: the update was skipped. Too many in a row end the run."""
        self.nonfinite_total, self.nonfinite_run = self.nonfinite_total + 1, self.nonfinite_run + 1
        log.warning("step %d: non-finite loss or gradient (loss %s, grad norm %s); update skipped",
                    step, float(loss.detach()), float(grad_norm))
        if self.nonfinite_run >= self.t.max_nonfinite:
            raise TrainingError(f"{self.nonfinite_run} non-finite steps in a row (last at step {step + 1}); stopping. "
                                "Lower optim.lr, raise optim.warmup_steps or use train.precision=fp32.")

    def step(self, step: int, batch, loss: torch.Tensor, lr: float, grad_norm, updated: bool, scale) -> None:
        """After each step; `scale()` (the logit scale) is read only when a record is written."""
        if updated:
            self.nonfinite_run = 0
        loss_value = loss.detach()
        if self.d.enabled:
            torch.distributed.all_reduce(loss_value)
            loss_value /= self.d.world
        self.window_samples += len(batch) * self.d.world
        if self.samples is not None:
            self.samples.write(json.dumps({"step": step + 1, "ids": batch.sample_ids}) + "\n")
        done = step + 1
        if self.metrics is not None and (done % self.t.log_every == 0 or done == self.t.steps):
            now = time.perf_counter()
            record = {"step": done, "loss": loss_value.item(), "lr": lr, "logit_scale": scale().item(),
                      "grad_norm": float(grad_norm), "samples_per_s": self.window_samples / (now - self.window_start),
                      "skipped": sum(self.stats.skipped.values()), "nonfinite": self.nonfinite_total}
            self.metrics.write(json.dumps(record) + "\n")
            self.metrics.flush()
            self.scalars(done, {f"train/{k}": v for k, v in record.items() if k != "step"})
            if self.plain:
                left = (now - self.run_start) / max(done - self.start, 1) * (self.t.steps - done)
                print(f"step {done}/{self.t.steps}  loss {record['loss']:.4f}  lr {lr:.2e}  "
                      f"samples/s {record['samples_per_s']:.0f}  skipped {record['skipped']}  "
                      f"left {int(left) // 60}m{int(left) % 60:02d}s", flush=True)
            if self.progress is not None:
                self.progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}",
                                          samples_s=f"{record['samples_per_s']:.0f}")
            self.window_start, self.window_samples = now, 0
        if self.progress is not None:
            self.progress.update(1)

    def scalars(self, step: int, values: dict) -> None:
        """To TensorBoard, when the run logs there, at `step` completed steps."""
        if self.board is not None:
            for name, value in values.items():
                self.board.add_scalar(name, value, step)
            self.board.flush()

    def flush(self) -> None:
        if self.samples is not None:
            self.samples.flush()

    def close(self) -> dict:
        """Close the files; on the main process write summary.json and the loss curve, print the summary."""
        if self.progress is not None:
            self.progress.close()
        for f in (self.metrics, self.samples, self.board, self.val):
            if f is not None:
                f.close()
        t = self.t
        summary = {"steps": t.steps, "resumed_from": self.start, "steps_this_run": t.steps - self.start,
                   "seconds": time.perf_counter() - self.run_start,
                   "data": self._global_stats(), "nonfinite_steps": self.nonfinite_total,
                   "checkpoint": str(self.run.step(t.steps)),
                   **({"best": {**self.best, "checkpoint": str(self.run.step(self.best["step"]))}} if self.best
                      else {})}
        if self.d.main:
            self._report(summary)
        return summary

    def _global_stats(self) -> dict:
        state = self.stats.state()
        if not self.d.enabled:
            return {**state, "seen": self.stats.seen}
        gathered = [None] * self.d.world
        torch.distributed.all_gather_object(gathered, state)
        skipped: dict[str, int] = {}
        for s in gathered:
            for reason, n in s["skipped"].items():
                skipped[reason] = skipped.get(reason, 0) + n
        accepted = sum(s["accepted"] for s in gathered)
        return {"accepted": accepted, "skipped": skipped, "seen": accepted + sum(skipped.values())}

    def _report(self, summary: dict) -> None:
        from ..plots import line_chart

        out = self.run.root
        records = [json.loads(ln) for ln in self.run.file("metrics.jsonl").read_text().splitlines() if ln.strip()]
        if records:
            line_chart([r["step"] for r in records], [r["loss"] for r in records], out / "loss.png",
                       title="training loss", xlabel="step", ylabel="loss")
        write_json(out / "summary.json", summary)
        data = summary["data"]
        skipped = ", ".join(f"{n} {r}" for r, n in sorted(data["skipped"].items())) or "none"
        print(f"trained {summary['steps_this_run']} steps in {summary['seconds']:.1f}s"
              + (f" (resumed at step {summary['resumed_from']}, now at {summary['steps']})"
                 if summary["resumed_from"] else "")
              + f"; final loss {records[-1]['loss']:.4f}" * bool(records))
        print(f"samples seen {data['seen']} = accepted {data['accepted']} + skipped "
              f"{sum(data['skipped'].values())} ({skipped}); non-finite steps skipped: {summary['nonfinite_steps']}")
        print(f"checkpoint: {summary['checkpoint']}  metrics: {out / 'metrics.jsonl'}  loss curve: {out / 'loss.png'}")
        if "best" in summary:
            best = summary["best"]
            print(f"best validation: {best['metric']} {best['value']:.4f} at step {best['step']} "
                  f"({self.run.checkpoints / 'best'}; every validation in {out / 'val.jsonl'})")
