"""Building the expert network and the codec between video frames and the space it denoises in."""

from __future__ import annotations

import torch
from diffusers import WanTransformer3DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, WanTimeTextImageEmbedding
from einops import rearrange
from torch import nn

from expert.seeding import seeded
from protocol.model import BackboneConfig


def build_backbone(cfg: BackboneConfig, text_dim: int, *, seed: int = 0,
                   out_channels: int | None = None) -> WanTransformer3DModel:
    """A diffusers Wan video transformer; text enters by cross-attention on the token states (and, with
    `text_conditioning="paris"`, as the pooled caption in the time embedding). Plain Wan (`"wan"`, velocity
    prediction) is diffusers' own class; otherwise `ParisWanTransformer3DModel`, whose config says what it adds."""
    channels = cfg.in_channels
    prediction = cfg.prediction if out_channels is None else None  # a router's K outputs are logits, not samples
    shape = dict(patch_size=tuple(cfg.patch_size), num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                 in_channels=channels, out_channels=out_channels or channels, text_dim=text_dim,
                 freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", rope_max_seq_len=1024)
    with seeded(seed):
        if cfg.text_conditioning == "wan" and prediction != "x":
            return WanTransformer3DModel(**shape)
        return ParisWanTransformer3DModel(**shape, text_conditioning=cfg.text_conditioning, prediction=prediction)


class ParisWanTransformer3DModel(WanTransformer3DModel):
    """Wan with what Paris adds to it (`condition_on_text`, `predict_clean_sample`) recorded in its config, so
    that an ensemble's `expert_i/` loads alone: `ParisWanTransformer3DModel.from_pretrained(folder/"expert_0")`
    rebuilds the same network (diffusers' `WanTransformer3DModel` would drop the pooled-caption weights)."""

    @register_to_config
    def __init__(self, patch_size: tuple[int, ...] = (1, 2, 2), num_attention_heads: int = 40,
                 attention_head_dim: int = 128, in_channels: int = 16, out_channels: int = 16, text_dim: int = 4096,
                 freq_dim: int = 256, ffn_dim: int = 13824, num_layers: int = 40, cross_attn_norm: bool = True,
                 qk_norm: str | None = "rms_norm_across_heads", eps: float = 1e-06, image_dim: int | None = None,
                 added_kv_proj_dim: int | None = None, rope_max_seq_len: int = 1024,
                 pos_embed_seq_len: int | None = None, text_conditioning: str = "paris",
                 prediction: str | None = None) -> None:
        super().__init__(patch_size, num_attention_heads, attention_head_dim, in_channels, out_channels, text_dim,
                         freq_dim, ffn_dim, num_layers, cross_attn_norm, qk_norm, eps, image_dim, added_kv_proj_dim,
                         rope_max_seq_len, pos_embed_seq_len)
        if text_conditioning == "paris":
            condition_on_text(self)
        if prediction == "x":
            predict_clean_sample(self)


X_MIN_T = 0.05  # the velocity of an x-prediction divides by t: bounded below, as in JiT (Li & He, 2025)


def predict_clean_sample(model: WanTransformer3DModel) -> WanTransformer3DModel:
    """Make the network predict the clean sample x_0 (in place): its output is read as x̂_0 and turned into
    the velocity v = (x_t − x̂_0) / max(t, X_MIN_T) by a forward hook, so every caller still receives a
    velocity (the training loss stays the velocity MSE, as in JiT).

    Why (measured on the small preset, 1000 steps, issue "prompts must steer the video"): a pixel patch of
    (2, 4, 4) × RGB is 96 values against a width of 128. A velocity is mostly the noise, which has no
    structure to compress, so a v-prediction network cannot pass it through and every sample kept
    per-pixel speckle: its mean absolute neighbour difference was 14.8 (guidance 1) against 7.6 for real
    clips, although the same network denoised a real clip well in one step (x_0 error 0.013 at t = 0.5,
    variance 0.082). A clean sample is smooth and predictable; with x-prediction the same budget gave 8.2."""
    model.register_forward_hook(_velocity_from_clean_sample, with_kwargs=True)
    return model


def _velocity_from_clean_sample(module, args, kwargs, output):
    x = args[0] if args else kwargs["hidden_states"]
    ts = args[1] if len(args) > 1 else kwargs["timestep"]
    clean = output[0] if isinstance(output, tuple) else output.sample
    t = (ts.float() / 1000.0).clamp_min(X_MIN_T).view(-1, *([1] * (clean.dim() - 1)))
    v = (x.float() - clean.float()) / t
    return (v,) if isinstance(output, tuple) else type(output)(sample=v)


def condition_on_text(model: WanTransformer3DModel) -> WanTransformer3DModel:
    """Make the caption reach the network (in place): padding positions (exactly zero in the text states,
    see expert.text) are masked out of cross-attention, and the mean of the real tokens' states, through a
    zero-initialised MLP, is added to the time embedding that modulates every block.

    Why (measured on the tiny preset, issue "prompts must steer the video"): with plain Wan, 56 % of a
    caption's 32 positions are padding and after 300 steps they took 43–56 % of the cross-attention while
    the colour word got 3.5 % (uniform: 3.1 %); the conditional and unconditional velocities differed by
    3 %. A colour-only probe (does the prediction lean to the prompt's colour; chance 0.17) went from 0.45
    to 0.50 with the mask and to 0.52 with the pooled caption (300 steps); with both and a LayerScale text
    tower (TextEncoderConfig.layer_scale) it reached 0.62 at 600 steps (0.43 before), and swapping a caption
    for one of another colour raised the loss 10× more than before (1.04 vs 0.098 relative at t = 0.9)."""
    old = model.condition_embedder
    new = PooledTextEmbedding(old.time_proj.in_features, old.timesteps_proj.num_channels,
                              old.time_proj.out_features, old.text_embedder.linear_1.in_features)
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooled_text.") for k in missing):
        raise RuntimeError(f"Wan's condition embedder changed shape (missing {missing}, unexpected {unexpected})")
    model.condition_embedder = new
    for block in model.blocks:
        block.attn2.set_processor(MaskedCrossAttnProcessor())
    return model


class PooledTextEmbedding(WanTimeTextImageEmbedding):
    """Wan's time + text embedding, with the pooled caption added to the time embedding (before the
    projection that modulates the blocks and the output norm) and the projected padding kept at zero."""

    def __init__(self, dim: int, time_freq_dim: int, time_proj_dim: int, text_embed_dim: int) -> None:
        super().__init__(dim, time_freq_dim, time_proj_dim, text_embed_dim)
        self.pooled_text = nn.Sequential(nn.Linear(text_embed_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.pooled_text[-1].weight)  # starts as plain Wan; learns how much the caption shifts t
        nn.init.zeros_(self.pooled_text[-1].bias)

    def forward(self, timestep, encoder_hidden_states, encoder_hidden_states_image=None, timestep_seq_len=None):
        if encoder_hidden_states_image is not None:
            raise ValueError("image conditioning is not supported")
        keep = real_tokens(encoder_hidden_states).unsqueeze(-1).to(encoder_hidden_states.dtype)  # B×L×1
        pooled = (encoder_hidden_states * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        t = self.timesteps_proj(timestep)
        if timestep_seq_len is not None:
            t = t.unflatten(0, (-1, timestep_seq_len))
        dtype = next(iter(self.time_embedder.parameters())).dtype
        if t.dtype != dtype and dtype != torch.int8:
            t = t.to(dtype)
        shift = self.pooled_text(pooled.to(dtype))
        temb = self.time_embedder(t) + (shift.unsqueeze(1) if t.dim() == 3 else shift)
        temb = temb.type_as(encoder_hidden_states)
        timestep_proj = self.time_proj(self.act_fn(temb))
        text = self.text_embedder(encoder_hidden_states) * keep  # zero rows mark padding for the attention
        return temb, timestep_proj, text, None


def real_tokens(states: torch.Tensor) -> torch.Tensor:
    """B×L bool: the positions that are not padding (padding states are exactly zero). A caption with no
    real token at all (a router fed constant zeros) attends to every position instead of none."""
    keep = states.abs().amax(-1) > 0
    return keep | ~keep.any(-1, keepdim=True)


class MaskedCrossAttnProcessor(WanAttnProcessor):
    """Wan's attention processor, with padding keys masked out of cross-attention."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        if encoder_hidden_states is not None and attention_mask is None:
            attention_mask = real_tokens(encoder_hidden_states)[:, None, None, :]
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class PixelCodec(nn.Module):
    """uint8 B×T×H×W×3 ↔ float B×3×T×H×W in [-1, 1], resampled to the preset's frames and size."""

    caches_latents = False  # encoding is a rescale: trainers encode each batch as they draw it

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def latent_shape(self) -> tuple[int, int, int, int]:
        return (self.cfg.in_channels, self.cfg.frames, self.cfg.height, self.cfg.width)

    def to_model_frames(self, frames: torch.Tensor) -> torch.Tensor:
        x = rearrange(frames, "b t h w c -> b c t h w").float().div(127.5).sub(1.0)
        t, h, w = self.cfg.frames, self.cfg.height, self.cfg.width
        if x.shape[2] != t and x.shape[2] % t == 0:
            x = x[:, :, :: x.shape[2] // t]  # an integer stride keeps frames sharp (no blending)
        if x.shape[2:] != (t, h, w):
            x = nn.functional.interpolate(x, size=(t, h, w), mode="trilinear", align_corners=False)
        return x

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.to_model_frames(frames)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        x = rearrange(x.float(), "b c t h w -> b t h w c")
        return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def build_codec(cfg: BackboneConfig) -> PixelCodec:
    """Frames as they are (pixel presets) or the latent space of the run's VAE (expert.vae)."""
    if cfg.space == "latent":
        from expert.vae import VaeCodec

        return VaeCodec(cfg)
    return PixelCodec(cfg)
