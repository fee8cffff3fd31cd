"""A Hugging Face transformers encoder as the text tower (multilingual CLIP: open_clip's xlm-roberta-*, nllb-clip-*
and mt5-* configs, built on its HFTextEncoder).

transformers' own encoder module runs inside the tower, so its numbers are the reference's by construction (its
attention-mask handling, XLM-R's padding-offset positions, NLLB's scaled sinusoidal embeddings, mT5's relative
position buckets) and its state dict keys are transformers' under `text.encoder.`. transformers is imported
only when such a tower is built. The tower adds what open_clip adds: the padding mask (ids != pad_id), the pooling
over real tokens and the projection.

`ENCODERS` is the table of kinds: a new kind is one row (the module that builds it and where its blocks are).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..config import HFTextConfig
from ..errors import MissingDependency, UserError


def _xlmr(config):
    import transformers

    return transformers.AutoModel.from_config(config, add_pooling_layer=False)


def _m2m100(config):
    from transformers.models.m2m_100.modeling_m2m_100 import M2M100Encoder

    return M2M100Encoder(config)


def _mt5(config):
    from transformers.models.mt5.modeling_mt5 import MT5Stack

    config = copy.deepcopy(config)
    config.is_decoder, config.use_cache, config.is_encoder_decoder = False, False, False
    return MT5Stack(config)


# model_type -> (how the encoder is built from its transformers config, the path of its list of blocks)
ENCODERS = {
    "xlm-roberta": (_xlmr, "encoder.layer"),
    "roberta": (_xlmr, "encoder.layer"),
    "bert": (_xlmr, "encoder.layer"),
    "m2m_100": (_m2m100, "layers"),
    "mt5": (_mt5, "block"),
}


def hf_config(cfg: HFTextConfig):
    """transformers' config object for the encoder."""
    try:
        import transformers
    except ImportError as e:
        raise MissingDependency(f"a {cfg.model_type} text tower is a transformers encoder: pip install "
                                "transformers") from e
    fields = cfg.fields
    config = transformers.AutoConfig.for_model(cfg.model_type, **fields)
    config._attn_implementation = "sdpa"  # transformers' default; named so every build computes alike
    return config


class HFTextTower(nn.Module):
    def __init__(self, cfg: HFTextConfig, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        build, self._blocks_path = ENCODERS[cfg.model_type]
        self.encoder = build(hf_config(cfg))
        width = cfg.width
        if cfg.proj == "linear":
            self.head: nn.Module = nn.Linear(width, embed_dim, bias=False)
        elif cfg.proj == "mlp":
            hidden = (width + embed_dim) // 2
            self.head = nn.Sequential(nn.Linear(width, hidden, bias=False), nn.GELU(),
                                      nn.Linear(hidden, embed_dim, bias=False))
        else:
            if width != embed_dim:
                raise UserError(f"a text tower without projection must be embed_dim wide ({width} != {embed_dim})")
            self.head = nn.Identity()

    def blocks(self) -> list[nn.Module]:
        module = self.encoder
        for name in self._blocks_path.split("."):
            module = getattr(module, name)
        return list(module)

    def set_grad_checkpointing(self, enable: bool) -> None:
        enc = self.encoder
        if hasattr(enc, "activation_checkpointing_enable"):  # transformers 5 (its gradient_* names warn)
            if enable:
                enc.activation_checkpointing_enable()  # non-reentrant by default
            elif enc.is_activation_checkpointing:
                enc.activation_checkpointing_disable()
        elif enable:
            enc.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif enc.is_gradient_checkpointing:
            enc.gradient_checkpointing_disable()

    def fill_buffers(self) -> None:
        """The encoder's non-persistent buffers, which no state dict holds, computed where a model built on the
        meta device (and loaded with assign=True) left them empty: XLM-R's position and token-type ids, NLLB's
        sinusoidal positions. They are functions of the config; an unknown one is an error, not a guess."""
        for module in self.encoder.modules():
            for name in list(module._non_persistent_buffers_set):
                buffer = getattr(module, name)
                if buffer is None or not buffer.is_meta:
                    continue
                if name == "position_ids":
                    value = torch.arange(buffer.shape[-1]).expand(buffer.shape)
                elif name == "token_type_ids":
                    value = torch.zeros(buffer.shape, dtype=buffer.dtype)
                elif name == "weights" and hasattr(module, "get_embedding"):  # M2M100's sinusoidal positions
                    value = module.get_embedding(buffer.shape[0], module.embedding_dim, module.padding_idx)
                else:
                    raise UserError(f"{self.cfg.model_type} encoder: its buffer {type(module).__name__}.{name} is "
                                    "not known to dualtower and cannot be computed")
                module.register_buffer(name, value.to(buffer.dtype), persistent=False)

    def token_table(self) -> nn.Embedding:
        return self.encoder.get_input_embeddings()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L): every position counts (bidirectional), padding masked out of attention and pooling."""
        if ids.ndim != 2:
            raise UserError(f"token ids must be (B, L), got {tuple(ids.shape)}")
        device = self.token_table().weight.device
        ids = ids.to(device)
        return self.encode(ids)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """Without checks (what an exported graph runs)."""
        mask = (ids != self.cfg.pad_id).long()
        x = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        if self.cfg.pool == "cls":
            pooled = x[:, 0]
        elif self.cfg.pool == "mean":
            pooled = (x * mask.unsqueeze(-1)).sum(dim=1) / mask.sum(dim=-1, keepdim=True)
        else:  # max over real tokens
            pooled = x.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).max(dim=1).values
        return self.head(pooled)
