"""Training: the config tree (config), the loop (loop.train, top to bottom), its bookkeeping (runlog), training
checkpoints (state), the optimizer and schedule (optim), and gradient-cache steps (gradcache)."""
