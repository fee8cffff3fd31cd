"""Our own checkpoint directory (see `dualtower.checkpoint`) as a format of the registry."""

from __future__ import annotations

from pathlib import Path

from .. import checkpoint
from ..config import ModelConfig
from .files import Probe
from .registry import Format, register


class Ours(Format):
    name = "dualtower"
    summary = "a dualtower checkpoint directory (config.json with format 'dualtower', model.safetensors)"
    holds_naflex = True
    holds_hf_text = True
    holds_conv = True

    def detect(self, probe: Probe) -> bool:
        return probe.is_directory and probe.config.get("format") == checkpoint.FORMAT

    def read_config(self, probe: Probe, arch: str | None) -> ModelConfig:
        return checkpoint.read_config(probe.path, probe.config)

    def read_state(self, probe: Probe, cfg: ModelConfig) -> dict:
        return checkpoint.read_state(probe.path, cfg)

    def to_ours(self, state, cfg, our_keys, source):
        return state

    def from_ours(self, state, cfg):
        return state

    def write(self, model, dst: Path) -> None:
        checkpoint.save(model, dst)


FORMAT = register(Ours())
