"""Run under torchrun: training where rank 1 dies abruptly at step 2 (a crashed machine, an OOM kill)."""

import os
import sys

import dualtower.train.loop as loop
import dualtower.train.objective as objective
from dualtower import configtree
from dualtower.train.config import TrainConfig

real_clip_loss = objective.clip_loss


def dying_clip_loss(*args, **kwargs):
    dying_clip_loss.calls += 1
    if os.environ.get("RANK") == "1" and dying_clip_loss.calls == 3:
        os._exit(17)
    return real_clip_loss(*args, **kwargs)


dying_clip_loss.calls = 0
objective.clip_loss = dying_clip_loss  # what the run's ContrastiveLoss calls
loop.train(configtree.load(TrainConfig, None, sys.argv[1:]))
