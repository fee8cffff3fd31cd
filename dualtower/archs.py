"""Named architectures: pure data, one table (`ARCHS`), one keyword entry per architecture.

An entry holds the architecture's config and what other codebases call it: the timm model that builds its vision
tower, how open_clip builds it ("vit": open_clip's own VisionTransformer with the OpenAI tokenizer; "timm": a timm
trunk), and its well-known pretrained weights. `REGISTRY`, `TIMM_NAMES`, the open_clip name lists and
`hub.KNOWN` are views of it. Each family's config is made by its builder in `families` (open_clip's ViT sizes
decoded there once from `VISION_SIZES`). The `tiny-*` configs keep tests fast and cover the options no
published config uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ModelConfig, PreprocessConfig, TextConfig, VisionConfig
from .errors import UnknownName, UserError
from .families import (aimv2, convnext, eva02, internvit, mobileclip, multilingual, nllb_siglip, pe_core, pe_trunk,
                       siglip, siglip2, tiny, tiny_convnext, tiny_fastvit, tiny_naflex, tipsv2, vit, worldwide)


@dataclass(frozen=True)
class Pretrained:
    """Well-known weights of an architecture: the short name `dualtower.load` takes, its Hub repo, and the layout
    (a format of dualtower.convert) its files are in."""

    name: str
    repo: str
    layout: str


@dataclass(frozen=True)
class Arch:
    config: ModelConfig
    timm: str | None = None  # the timm model that builds its vision tower (timm's hub config.json names it)
    open_clip: str | None = None  # "vit" or "timm": how open_clip builds it; None: open_clip has no such config
    hf_text: str | None = None  # the Hub name of its transformers text encoder (open_clip's text_cfg.hf_model_name)
    pretrained: tuple[Pretrained, ...] = ()

    @property
    def name(self) -> str:
        return self.config.name


def _table(*archs: Arch) -> dict[str, Arch]:
    table = {}
    for arch in archs:
        if arch.name in table:
            raise UserError(f"architecture {arch.name!r} is listed twice")
        table[arch.name] = arch
    return table


ARCHS: dict[str, Arch] = _table(
    Arch(vit("ViT-S-16", "S", patch=16, embed=384), open_clip="vit"),
    Arch(vit("ViT-S-32", "S", patch=32, embed=384), open_clip="vit"),
    Arch(vit("ViT-S-32-alt", "S", patch=32, embed=256, text_depth=10), open_clip="vit"),
    Arch(vit("ViT-M-16", "M", patch=16, embed=512), open_clip="vit"),
    Arch(vit("ViT-M-16-alt", "M", patch=16, embed=384, ls_init=0.0001), open_clip="vit"),
    Arch(vit("ViT-M-32", "M", patch=32, embed=512), open_clip="vit"),
    Arch(vit("ViT-M-32-alt", "M", patch=32, embed=384), open_clip="vit"),
    Arch(vit("ViT-B-32", "B", patch=32, embed=512), open_clip="vit", timm="vit_base_patch32_clip_224",
         pretrained=(
             Pretrained("ViT-B-32/laion2b_s34b_b79k", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "open_clip_hub"),
             Pretrained("ViT-B-32/datacomp_xl_s13b_b90k", "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K", "open_clip_hub"),
         )),
    Arch(vit("ViT-B-32-quickgelu", "B", patch=32, embed=512, quick_gelu=True), open_clip="vit",
         timm="vit_base_patch32_clip_quickgelu_224",
         pretrained=(
             Pretrained("ViT-B-32/openai", "openai/clip-vit-base-patch32", "hf-clip"),
         )),
    Arch(vit("ViT-B-32-256", "B", patch=32, embed=512, image=256), open_clip="vit"),
    Arch(vit("ViT-B-32-plus-256", "B-plus", patch=32, embed=640, image=256), open_clip="vit"),
    Arch(vit("ViT-B-16", "B", patch=16, embed=512), open_clip="vit", timm="vit_base_patch16_clip_224",
         pretrained=(
             Pretrained("ViT-B-16/laion2b_s34b_b88k", "laion/CLIP-ViT-B-16-laion2B-s34B-b88K", "open_clip_hub"),
             Pretrained("ViT-B-16/datacomp_xl_s13b_b90k", "laion/CLIP-ViT-B-16-DataComp.XL-s13B-b90K", "open_clip_hub"),
         )),
    Arch(vit("ViT-B-16-quickgelu", "B", patch=16, embed=512, quick_gelu=True), open_clip="vit",
         timm="vit_base_patch16_clip_quickgelu_224",
         pretrained=(
             Pretrained("ViT-B-16/openai", "openai/clip-vit-base-patch16", "hf-clip"),
         )),
    Arch(vit("ViT-B-16-plus", "B-plus", patch=16, embed=640), open_clip="vit"),
    Arch(vit("ViT-B-16-plus-240", "B-plus", patch=16, embed=640, image=240), open_clip="vit"),
    Arch(vit("ViT-L-14", "L", patch=14, embed=768), open_clip="vit", timm="vit_large_patch14_clip_224",
         pretrained=(
             Pretrained("ViT-L-14/laion2b_s32b_b82k", "laion/CLIP-ViT-L-14-laion2B-s32B-b82K", "open_clip_hub"),
             Pretrained("ViT-L-14/datacomp_xl_s13b_b90k", "laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K", "open_clip_hub"),
         )),
    Arch(vit("ViT-L-14-quickgelu", "L", patch=14, embed=768, quick_gelu=True), open_clip="vit",
         timm="vit_large_patch14_clip_quickgelu_224",
         pretrained=(
             Pretrained("ViT-L-14/openai", "openai/clip-vit-large-patch14", "hf-clip"),
         )),
    Arch(vit("ViT-L-14-280", "L", patch=14, embed=768, image=280), open_clip="vit"),
    Arch(vit("ViT-L-14-336", "L", patch=14, embed=768, image=336), open_clip="vit",
         timm="vit_large_patch14_clip_336"),
    Arch(vit("ViT-L-14-336-quickgelu", "L", patch=14, embed=768, image=336, quick_gelu=True), open_clip="vit",
         timm="vit_large_patch14_clip_quickgelu_336",
         pretrained=(
             Pretrained("ViT-L-14-336/openai", "openai/clip-vit-large-patch14-336", "hf-clip"),
         )),
    Arch(vit("ViT-L-16", "L", patch=16, embed=768), open_clip="vit"),
    Arch(vit("ViT-L-16-320", "L", patch=16, embed=768, image=320), open_clip="vit"),
    Arch(vit("ViT-H-14", "H", patch=14, embed=1024, text_depth=24), open_clip="vit", timm="vit_huge_patch14_clip_224",
         pretrained=(
             Pretrained("ViT-H-14/laion2b_s32b_b79k", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "open_clip_hub"),
         )),
    Arch(vit("ViT-H-14-quickgelu", "H", patch=14, embed=1024, text_depth=24, quick_gelu=True), open_clip="vit",
         timm="vit_huge_patch14_clip_quickgelu_224"),
    Arch(vit("ViT-H-14-378", "H", patch=14, embed=1024, image=378, text_depth=24), open_clip="vit",
         timm="vit_huge_patch14_clip_378"),
    Arch(vit("ViT-H-14-378-quickgelu", "H", patch=14, embed=1024, image=378, text_depth=24, quick_gelu=True),
         open_clip="vit"),
    Arch(vit("ViT-H-16", "H", patch=16, embed=1024, text_depth=24), open_clip="vit"),
    Arch(vit("ViT-g-14", "g", patch=14, embed=1024, text_depth=24), open_clip="vit"),
    Arch(vit("ViT-bigG-14", "bigG", patch=14, embed=1280, text_depth=32), open_clip="vit",
         timm="vit_gigantic_patch14_clip_224",
         pretrained=(
             Pretrained("ViT-bigG-14/laion2b_s39b_b160k", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k", "open_clip_hub"),
         )),
    Arch(vit("ViT-bigG-14-quickgelu", "bigG", patch=14, embed=1280, text_depth=32, quick_gelu=True), open_clip="vit"),
    Arch(vit("ViT-e-14", "e", patch=14, embed=1280, text_depth=36), open_clip="vit"),
    Arch(worldwide("ViT-L-14-worldwide", "L", 768, 12, mt5=True), open_clip="vit"),
    Arch(worldwide("ViT-L-14-worldwide-quickgelu", "L", 768, 12, quick_gelu=True, mt5=True), open_clip="vit"),
    Arch(worldwide("ViT-H-14-worldwide", "H", 1024, 24), open_clip="vit"),
    Arch(worldwide("ViT-H-14-worldwide-quickgelu", "H", 1024, 24, quick_gelu=True), open_clip="vit",
         pretrained=(Pretrained("ViT-H-14-worldwide-quickgelu/metaclip2_worldwide",
                                "timm/vit_huge_patch14_clip_224.metaclip2_worldwide", "open_clip_hub"),)),
    Arch(worldwide("ViT-H-14-worldwide-378", "H", 1024, 24, image=378), open_clip="vit",
         pretrained=(Pretrained("ViT-H-14-worldwide-378/metaclip2_worldwide",
                                "timm/vit_huge_patch14_clip_378.metaclip2_worldwide", "open_clip_hub"),)),
    Arch(worldwide("ViT-bigG-14-worldwide", "bigG", 1280, 32), open_clip="vit",
         pretrained=(Pretrained("ViT-bigG-14-worldwide/metaclip2_worldwide",
                                "timm/vit_gigantic_patch14_clip_224.metaclip2_worldwide", "open_clip_hub"),)),
    Arch(worldwide("ViT-bigG-14-worldwide-378", "bigG", 1280, 32, image=378), open_clip="vit",
         pretrained=(Pretrained("ViT-bigG-14-worldwide-378/metaclip2_worldwide",
                                "timm/vit_gigantic_patch14_clip_378.metaclip2_worldwide", "open_clip_hub"),)),
    *[Arch(multilingual(name, hub_name, vit("", size, patch=patch, embed=embed), embed, pool, proj),
           open_clip="vit", hf_text=hub_name,
           pretrained=(Pretrained(f"{name}/{tag}", repo, "open_clip_hub"),) if repo else ())
      for name, hub_name, size, patch, embed, pool, proj, tag, repo in (
          ("xlm-roberta-base-ViT-B-32", "xlm-roberta-base", "B", 32, 512, "mean", "mlp", "laion5b_s13b_b90k",
           "laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k"),
          ("xlm-roberta-large-ViT-H-14", "xlm-roberta-large", "H", 14, 1024, "mean", "mlp",
           "frozen_laion5b_s13b_b90k", "laion/CLIP-ViT-H-14-frozen-xlm-roberta-large-laion5B-s13B-b90k"),
          ("nllb-clip-base", "facebook/nllb-200-distilled-600M", "B", 32, 512, "cls", "linear", "v1",
           "visheratin/nllb-clip-base-oc"),
          ("nllb-clip-large", "facebook/nllb-200-distilled-1.3B", "H", 14, 1024, "cls", "linear", "v1",
           "visheratin/nllb-clip-large-oc"),
          ("mt5-base-ViT-B-32", "google/mt5-base", "B", 32, 512, "mean", "mlp", None, None),
          ("mt5-xl-ViT-H-14", "google/mt5-xl", "H", 14, 1024, "mean", "mlp", None, None))],
    Arch(nllb_siglip("nllb-clip-base-siglip", siglip("", 384, 16, 768, 12, 12, 3072),
                      "facebook/nllb-200-distilled-600M"),
         timm="vit_base_patch16_siglip_384", open_clip="timm", hf_text="facebook/nllb-200-distilled-600M",
         pretrained=(Pretrained("nllb-clip-base-siglip/v1", "visheratin/nllb-clip-base-siglip", "open_clip_hub"),
                     Pretrained("nllb-clip-base-siglip/mrl", "visheratin/nllb-siglip-mrl-base", "open_clip_hub"))),
    Arch(nllb_siglip("nllb-clip-large-siglip", siglip("", 384, 14, 1152, 27, 16, 4304),
                      "facebook/nllb-200-distilled-1.3B"),
         timm="vit_so400m_patch14_siglip_384", open_clip="timm", hf_text="facebook/nllb-200-distilled-1.3B",
         pretrained=(Pretrained("nllb-clip-large-siglip/v1", "visheratin/nllb-clip-large-siglip", "open_clip_hub"),
                     Pretrained("nllb-clip-large-siglip/mrl", "visheratin/nllb-siglip-mrl-large", "open_clip_hub"))),
    Arch(eva02("EVA02-B-16", 512, 224, 16, 768, 12, 12, 512, 8), timm="eva02_base_patch16_clip_224", open_clip="timm",
         pretrained=(Pretrained("EVA02-B-16/merged2b_s8b_b131k", "timm/eva02_base_patch16_clip_224.merged2b_s8b_b131k",
                                "open_clip_hub"),)),
    Arch(eva02("EVA02-L-14", 768, 224, 14, 1024, 24, 16, 768, 12), timm="eva02_large_patch14_clip_224",
         open_clip="timm", pretrained=(Pretrained("EVA02-L-14/merged2b_s4b_b131k",
                                                  "timm/eva02_large_patch14_clip_224.merged2b_s4b_b131k",
                                                  "open_clip_hub"),)),
    Arch(eva02("EVA02-L-14-336", 768, 336, 14, 1024, 24, 16, 768, 12), timm="eva02_large_patch14_clip_336",
         open_clip="timm"),
    Arch(siglip("ViT-B-16-SigLIP", 224, 16, 768, 12, 12, 3072), timm="vit_base_patch16_siglip_224", open_clip="timm",
         pretrained=(Pretrained("ViT-B-16-SigLIP/webli", "google/siglip-base-patch16-224", "hf-siglip"),)),
    Arch(siglip("ViT-B-16-SigLIP-256", 256, 16, 768, 12, 12, 3072), timm="vit_base_patch16_siglip_256",
         open_clip="timm"),
    Arch(siglip("ViT-B-16-SigLIP-384", 384, 16, 768, 12, 12, 3072), timm="vit_base_patch16_siglip_384",
         open_clip="timm"),
    Arch(siglip("ViT-L-16-SigLIP-256", 256, 16, 1024, 24, 16, 4096), timm="vit_large_patch16_siglip_256",
         open_clip="timm",
         pretrained=(Pretrained("ViT-L-16-SigLIP-256/webli", "google/siglip-large-patch16-256", "hf-siglip"),)),
    Arch(siglip("ViT-SO400M-14-SigLIP", 224, 14, 1152, 27, 16, 4304, context=16),
         timm="vit_so400m_patch14_siglip_224", open_clip="timm"),
    Arch(siglip("ViT-SO400M-14-SigLIP-384", 384, 14, 1152, 27, 16, 4304), timm="vit_so400m_patch14_siglip_384",
         open_clip="timm", pretrained=(Pretrained("ViT-SO400M-14-SigLIP-384/webli", "google/siglip-so400m-patch14-384",
                                                  "hf-siglip"),)),
    Arch(siglip2("ViT-B-16-SigLIP2", 224, 16, 768, 12, 12, 3072, "gelu"),
         timm="vit_base_patch16_siglip_224", open_clip="timm",
         pretrained=(Pretrained("ViT-B-16-SigLIP2/webli", "timm/ViT-B-16-SigLIP2", "open_clip_hub"),)),
    Arch(siglip2("ViT-B-16-SigLIP2-256", 256, 16, 768, 12, 12, 3072, "gelu"),
         timm="vit_base_patch16_siglip_256", open_clip="timm"),
    Arch(siglip2("ViT-B-16-SigLIP2-384", 384, 16, 768, 12, 12, 3072, "gelu"),
         timm="vit_base_patch16_siglip_384", open_clip="timm"),
    Arch(siglip2("ViT-B-16-SigLIP2-512", 512, 16, 768, 12, 12, 3072, "gelu"),
         timm="vit_base_patch16_siglip_512", open_clip="timm"),
    Arch(siglip2("ViT-B-32-SigLIP2-256", 256, 32, 768, 12, 12, 3072, "gelu_tanh"),
         timm="vit_base_patch32_siglip_256", open_clip="timm"),
    Arch(siglip2("ViT-L-16-SigLIP2-256", 256, 16, 1024, 24, 16, 4096, "gelu"),
         timm="vit_large_patch16_siglip_256", open_clip="timm"),
    Arch(siglip2("ViT-L-16-SigLIP2-384", 384, 16, 1024, 24, 16, 4096, "gelu"),
         timm="vit_large_patch16_siglip_384", open_clip="timm"),
    Arch(siglip2("ViT-L-16-SigLIP2-512", 512, 16, 1024, 24, 16, 4096, "gelu_tanh"),
         timm="vit_large_patch16_siglip_512", open_clip="timm"),
    Arch(siglip2("ViT-SO400M-14-SigLIP2", 224, 14, 1152, 27, 16, 4304, "gelu"),
         timm="vit_so400m_patch14_siglip_224", open_clip="timm",
         pretrained=(Pretrained("ViT-SO400M-14-SigLIP2/webli", "timm/ViT-SO400M-14-SigLIP2", "open_clip_hub"),)),
    Arch(siglip2("ViT-SO400M-14-SigLIP2-378", 378, 14, 1152, 27, 16, 4304, "gelu"),
         timm="vit_so400m_patch14_siglip_378", open_clip="timm"),
    Arch(siglip2("ViT-SO400M-16-SigLIP2-256", 256, 16, 1152, 27, 16, 4304, "gelu_tanh"),
         timm="vit_so400m_patch16_siglip_256", open_clip="timm"),
    Arch(siglip2("ViT-SO400M-16-SigLIP2-384", 384, 16, 1152, 27, 16, 4304, "gelu_tanh"),
         timm="vit_so400m_patch16_siglip_384", open_clip="timm"),
    Arch(siglip2("ViT-SO400M-16-SigLIP2-512", 512, 16, 1152, 27, 16, 4304, "gelu_tanh"),
         timm="vit_so400m_patch16_siglip_512", open_clip="timm"),
    Arch(siglip2("ViT-gopt-16-SigLIP2-256", 256, 16, 1536, 40, 16, 6144, "gelu_tanh", text=(1152, 27, 16, 4304)),
         timm="vit_giantopt_patch16_siglip_256", open_clip="timm"),
    Arch(siglip2("ViT-gopt-16-SigLIP2-384", 384, 16, 1536, 40, 16, 6144, "gelu_tanh", text=(1152, 27, 16, 4304)),
         timm="vit_giantopt_patch16_siglip_384", open_clip="timm"),
    *[Arch(pe_core(name, *shape, **extra), timm=trunk, open_clip="timm",
           pretrained=(Pretrained(f"{name}/meta", f"timm/{name}", "open_clip_hub"),))
      for name, trunk, shape, extra in (
          ("PE-Core-T-16-384", "vit_pe_core_tiny_patch16_384", (384, 16, 192, 12, 3, 768, 512, (512, 8, 12)), {}),
          ("PE-Core-S-16-384", "vit_pe_core_small_patch16_384", (384, 16, 384, 12, 6, 1536, 512, (512, 8, 12)), {}),
          ("PE-Core-B-16", "vit_pe_core_base_patch16_224", (224, 16, 768, 12, 12, 3072, 1024, (1024, 16, 24)), {}),
          ("PE-Core-L-14-336", "vit_pe_core_large_patch14_336", (336, 14, 1024, 24, 16, 4096, 1024, (1024, 16, 24)),
           {}),
          ("PE-Core-bigG-14-448", "vit_pe_core_gigantic_patch14_448",
           (448, 14, 1536, 50, 16, 8960, 1280, (1280, 20, 24)), dict(context=72, class_token=False, offset=0.0)))],
    *[Arch(pe_trunk(f"PE-Spatial-{size}-16-512", 512, 16, width, 12, heads, 4 * width),
           timm=f"vit_pe_spatial_{timm_size}_patch16_512",
           pretrained=(Pretrained(f"PE-Spatial-{size}-16-512/meta", f"timm/vit_pe_spatial_{timm_size}_patch16_512.fb",
                                  "timm_hub"),))
      for size, timm_size, width, heads in (("T", "tiny", 192, 3), ("S", "small", 384, 6), ("B", "base", 768, 12))],
    Arch(pe_trunk("PE-Spatial-L-14-448", 448, 14, 1024, 24, 16, 4096), timm="vit_pe_spatial_large_patch14_448",
         pretrained=(Pretrained("PE-Spatial-L-14-448/meta", "timm/vit_pe_spatial_large_patch14_448.fb", "timm_hub"),)),
    Arch(pe_trunk("PE-Spatial-G-14-448", 448, 14, 1536, 50, 16, 8960, class_token=False, offset=0.0, ls_init=0.1),
         timm="vit_pe_spatial_gigantic_patch14_448",
         pretrained=(Pretrained("PE-Spatial-G-14-448/meta", "timm/vit_pe_spatial_gigantic_patch14_448.fb",
                                "timm_hub"),)),
    Arch(pe_trunk("PE-Lang-L-14-448", 448, 14, 1024, 23, 16, 4096, ls_init=0.1), timm="vit_pe_lang_large_patch14_448",
         pretrained=(Pretrained("PE-Lang-L-14-448/meta", "timm/vit_pe_lang_large_patch14_448.fb", "timm_hub"),
                     Pretrained("PE-Lang-L-14-448/meta_tiling", "timm/vit_pe_lang_large_patch14_448.fb_tiling",
                                "timm_hub"))),
    Arch(pe_trunk("PE-Lang-G-14-448", 448, 14, 1536, 47, 16, 8960, class_token=False, offset=0.0, ls_init=0.1),
         timm="vit_pe_lang_gigantic_patch14_448",
         pretrained=(Pretrained("PE-Lang-G-14-448/meta", "timm/vit_pe_lang_gigantic_patch14_448.fb", "timm_hub"),
                     Pretrained("PE-Lang-G-14-448/meta_tiling", "timm/vit_pe_lang_gigantic_patch14_448.fb_tiling",
                                "timm_hub"))),
    *[Arch(aimv2(f"AIMv2-{size}-14-{image}", image, width, depth, heads, ratio),
           timm=f"aimv2_{timm_size}_patch14_{image}",
           pretrained=(Pretrained(f"AIMv2-{size}-14-{image}/apple_pt",
                                  f"timm/aimv2_{timm_size}_patch14_{image}.apple_pt", "timm_hub"),))
      for size, timm_size, width, depth, heads, ratio in (("L", "large", 1024, 24, 8, 2.75),
                                                          ("H", "huge", 1536, 24, 12, 2.6667),
                                                          ("1B", "1b", 2048, 24, 16, 2.75),
                                                          ("3B", "3b", 3072, 24, 24, 2.6667))
      for image in (224, 336, 448)],
    *[Arch(tipsv2(f"TIPSv2-{size}-14", width, depth, heads, mlp_dim), timm=f"vit_{timm_size}_patch14_reg1_tipsv2",
           pretrained=(Pretrained(f"TIPSv2-{size}-14/webli", f"timm/vit_{timm_size}_patch14_reg1_tipsv2.webli",
                                  "timm_hub"),))
      for size, timm_size, width, depth, heads, mlp_dim in (("B", "base", 768, 12, 12, 3072),
                                                            ("L", "large", 1024, 24, 16, 4096),
                                                            ("SO400M", "so400m", 1152, 27, 16, 4304))],
    # MobileCLIP (apple/MobileCLIP-*-OpenCLIP) and MobileCLIP 2 (timm/MobileCLIP2-*-OpenCLIP) as open_clip has them
    *[Arch(mobileclip(name, vision, embed, causal, openai), timm=trunk, open_clip="timm",
           pretrained=(Pretrained(f"{name}/{tag}", repo, "open_clip_hub"),) if repo else ())
      for name, vision, trunk, embed, causal, openai, tag, repo in (
          ("MobileCLIP-S1", "mci1", "fastvit_mci1", 512, False, False, "datacompdr", "apple/MobileCLIP-S1-OpenCLIP"),
          ("MobileCLIP-S2", "mci2", "fastvit_mci2", 512, False, False, "datacompdr", "apple/MobileCLIP-S2-OpenCLIP"),
          ("MobileCLIP-B", "vit-b", "vit_base_mci_224", 512, True, False, "datacompdr_lt",
           "apple/MobileCLIP-B-LT-OpenCLIP"),
          ("MobileCLIP2-S0", "mci0", "fastvit_mci0", 512, False, False, "dfndr2b", "timm/MobileCLIP2-S0-OpenCLIP"),
          ("MobileCLIP2-S2", "mci2", "fastvit_mci2", 512, False, False, "dfndr2b", "timm/MobileCLIP2-S2-OpenCLIP"),
          ("MobileCLIP2-S3", "mci3", "fastvit_mci3", 768, False, True, "dfndr2b", "timm/MobileCLIP2-S3-OpenCLIP"),
          ("MobileCLIP2-S4", "mci4", "fastvit_mci4", 768, False, True, "dfndr2b", "timm/MobileCLIP2-S4-OpenCLIP"),
          ("MobileCLIP2-B", "vit-b", "vit_base_mci_224", 512, True, False, "dfndr2b", "timm/MobileCLIP2-B-OpenCLIP"),
          ("MobileCLIP2-L-14", "vit-l", "vit_large_patch14_clip_224", 768, False, True, "dfndr2b",
           "timm/MobileCLIP2-L-14-OpenCLIP"))],
    # LAION's ConvNeXt CLIP models as open_clip has them (laion/CLIP-convnext_*)
    *[Arch(convnext(name, trunk, image, embed, text_width, text_depth, mlp), timm=trunk, open_clip="timm",
           pretrained=tuple(Pretrained(f"{name}/{tag}", f"laion/CLIP-{repo}", "open_clip_hub") for tag, repo in weights))
      for name, trunk, image, embed, text_width, text_depth, mlp, weights in (
          ("convnext_tiny", "convnext_tiny", 224, 1024, 512, 12, False, ()),
          ("convnext_small", "convnext_small", 224, 512, 512, 12, False, ()),
          ("convnext_base", "convnext_base", 224, 512, 512, 12, False,
           (("laion400m_s13b_b51k", "convnext_base-laion400M-s13B-b51K"),)),
          ("convnext_base_w", "convnext_base", 256, 640, 640, 12, False,
           (("laion2b_s13b_b82k", "convnext_base_w-laion2B-s13B-b82K"),
            ("laion2b_s13b_b82k_augreg", "convnext_base_w-laion2B-s13B-b82K-augreg"),
            ("laion_aesthetic_s13b_b82k", "convnext_base_w-laion_aesthetic-s13B-b82K"))),
          ("convnext_base_w_320", "convnext_base", 320, 640, 640, 12, False,
           (("laion_aesthetic_s13b_b82k", "convnext_base_w_320-laion_aesthetic-s13B-b82K"),
            ("laion_aesthetic_s13b_b82k_augreg", "convnext_base_w_320-laion_aesthetic-s13B-b82K-augreg"))),
          ("convnext_large", "convnext_large", 224, 768, 768, 12, False, ()),
          ("convnext_large_d", "convnext_large", 256, 768, 768, 16, True,
           (("laion2b_s26b_b102k_augreg", "convnext_large_d.laion2B-s26B-b102K-augreg"),)),
          ("convnext_large_d_320", "convnext_large", 320, 768, 768, 16, True,
           (("laion2b_s29b_b131k_ft", "convnext_large_d_320.laion2B-s29B-b131K-ft"),
            ("laion2b_s29b_b131k_ft_soup", "convnext_large_d_320.laion2B-s29B-b131K-ft-soup"))),
          ("convnext_xlarge", "convnext_xlarge", 256, 1024, 1024, 20, False, ()),
          ("convnext_xxlarge", "convnext_xxlarge", 256, 1024, 1024, 24, False,
           (("laion2b_s34b_b82k_augreg", "convnext_xxlarge-laion2B-s34B-b82K-augreg"),
            ("laion2b_s34b_b82k_augreg_rewind", "convnext_xxlarge-laion2B-s34B-b82K-augreg-rewind"),
            ("laion2b_s34b_b82k_augreg_soup", "convnext_xxlarge-laion2B-s34B-b82K-augreg-soup"))),
          ("convnext_xxlarge_320", "convnext_xxlarge", 320, 1024, 1024, 24, False, ()))],
    Arch(internvit("InternViT-300M-448px", 1024, 24, 16, 4096, six_b=False), timm="vit_intern300m_patch14_448",
         pretrained=(Pretrained("InternViT-300M-448px/opengvlab", "OpenGVLab/InternViT-300M-448px", "internvl"),)),
    Arch(internvit("InternViT-6B-448px", 3200, 45, 25, 12800, six_b=True),
         pretrained=(Pretrained("InternViT-6B-448px/v1-5", "OpenGVLab/InternViT-6B-448px-V1-5", "internvl"),)),
    # InternVL-C's image side: InternViT-6B-224px (48 blocks) and its attention-pooling head to 768.
    Arch(internvit("InternVL-C-vision", 3200, 48, 25, 12800, six_b=True, image=224, clip_head=768),
         pretrained=(Pretrained("InternVL-C-vision/internvl-14b-224px", "OpenGVLab/InternVL-14B-224px", "internvl"),)),
    Arch(tiny_naflex("tiny-naflex")),
    Arch(tiny_fastvit("tiny-fastvit")),
    Arch(tiny_convnext("tiny-convnext")),
    Arch(tiny("tiny")),
    Arch(tiny("tiny-quickgelu", act="quick_gelu")),
    Arch(tiny("tiny-ls-mean", ls_init=0.1, pool="mean", final_norm="after_pool", image_size=40)),
    Arch(tiny("tiny-post-rms", post_norm=True, norm="rmsnorm", act="gelu_tanh", norm_pre=False, head_bias=True,
               patch_bias=True)),
    # A small model for the built-in 8x8 digits and 28x28 Fashion-MNIST (upscaled to 32 px, 4x4 patches of 8 px):
    # trains on the digits in about a minute on 2 CPU cores.
    Arch(ModelConfig(
        name="small-digits",
        embed_dim=128,
        vision=VisionConfig(image_size=32, patch_size=8, width=128, depth=3, heads=4, mlp_dim=512),
        text=TextConfig(context_length=32, width=128, depth=3, heads=4, mlp_dim=512),
        preprocess=PreprocessConfig(image_size=32),
    )),
)

# Views of the table
REGISTRY: dict[str, ModelConfig] = {name: arch.config for name, arch in ARCHS.items()}
OPENCLIP_NAMES = tuple(n for n, a in ARCHS.items() if a.open_clip == "vit")  # open_clip's own ViT configs
OPENCLIP_TIMM_NAMES = tuple(n for n, a in ARCHS.items() if a.open_clip == "timm")  # its timm-trunk configs
TIMM_NAMES = {name: arch.timm for name, arch in ARCHS.items() if arch.timm is not None}
PRETRAINED = {p.name: (name, p) for name, arch in ARCHS.items() for p in arch.pretrained}  # short name -> (arch, p)


def closest(name: str, names, n: int = 3) -> list[str]:
    """The names most like `name` (case aside: vit-b-32 -> ViT-B-32), for an error to suggest."""
    import difflib

    by_lower = {}
    for known in names:
        by_lower.setdefault(known.lower(), known)
    return [by_lower[m] for m in difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.6)]


def get_config(name: str) -> ModelConfig:
    if name not in REGISTRY:
        near = closest(name, REGISTRY)
        hint = f"did you mean {' or '.join(near)}?" if near else "none is close"
        raise UnknownName(f"unknown architecture {name!r}: {hint} (`dualtower archs` lists all {len(REGISTRY)})")
    return REGISTRY[name]


def config_of(name_or_model) -> ModelConfig:
    """The ModelConfig of an architecture name, a ModelConfig, or a model (anything with `.cfg`)."""
    if isinstance(name_or_model, str):
        return get_config(name_or_model)
    if isinstance(name_or_model, ModelConfig):
        return name_or_model
    return name_or_model.cfg


def list_architectures() -> list[str]:
    return sorted(REGISTRY)
