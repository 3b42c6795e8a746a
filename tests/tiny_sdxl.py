"""A tiny `StableDiffusionXLInpaintPipeline` built from configs with random weights, for offline tests.

It has the real SDXL inpainting structure - two CLIP text encoders (the second with a projection), a locally
built byte-level CLIP tokenizer, a UNet with 9 input channels (latents + mask + masked-image latents) and
`addition_embed_type="text_time"`, a VAE and an Euler scheduler - so the project's loading and generation code
runs unchanged on it, in well under a second per image at 64-128 px on one CPU thread. Its images are noise:
it proves the plumbing, not the defects.

    from tests.tiny_sdxl import save_tiny_sdxl_inpaint
    folder = save_tiny_sdxl_inpaint(tmp_path / "tiny-sdxl")   # then synth.model: <folder>
"""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_HIDDEN = 16  # each text encoder's hidden size; the UNet cross-attends to both, concatenated
TIME_EMBED_DIM = (
    8  # SDXL micro-conditioning: 6 numbers (original size, crop corner, target size) each embedded
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (the tokenizer's base alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def tiny_clip_tokenizer():
    """A CLIPTokenizer without downloads: the byte alphabet, each letter also as a word end (`a</w>`), and the
    two special tokens; no merges, so every word becomes its characters - enough to encode any prompt."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = CLIPTokenizer(vocab=vocab, merges=[])
    tok.model_max_length = 77
    return tok


def tiny_sdxl_inpaint_pipeline(seed: int = 0):
    """The tiny pipeline in eval mode (modules built from configs start in training mode, which would make
    outputs differ after a save/reload)."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=TEXT_HIDDEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
    )
    text_encoder = CLIPTextModel(text_config)
    text_encoder_2 = CLIPTextModelWithProjection(text_config)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=9,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=2 * TEXT_HIDDEN,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_HIDDEN,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLInpaintPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        text_encoder_2=text_encoder_2.eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_sdxl_inpaint(folder: Path, seed: int = 0) -> Path:
    """Build the tiny pipeline and `save_pretrained` it to `folder` (a diffusers model folder, like a hub
    snapshot); returns the folder."""
    folder = Path(folder)
    tiny_sdxl_inpaint_pipeline(seed).save_pretrained(folder)
    return folder
