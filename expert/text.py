"""The frozen text encoder: an open_clip text tower that turns caption tokens into per-token states.

With `weights` (an asset: a weights file, by CID) the named open_clip model's text tower is loaded — once, at
`run init`, which stores every caption's states with the data (expert.latent_data), so trainers, verifiers and
routers never load it; only samplers do, for new prompts. Otherwise a tower (the named architecture, or a small
custom one) is built with random init from the config's seed — random but frozen and identical on every peer
and in every process, so the experts learn to read it through cross-attention and a verifier conditions on the
same states as the trainer. The tokenizer is always the real BPE one.

Why the random tower is built with LayerScale and why padding is zeroed: see `TextEncoderConfig.layer_scale`
and `expert.backbone.condition_on_text` (measured in the commit that added them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from expert.assets import asset_path
from expert.seeding import seeded
from protocol.errors import ParisError
from protocol.model import TextEncoderConfig


class TextEncoder(nn.Module):
    """tokens (B×L int) → states (B×L'×width float32), L' = config.context_length."""

    def __init__(self, config: TextEncoderConfig, *, load_weights: bool = True) -> None:
        """`load_weights=False`: the architecture only (the caller loads a state dict, as an ensemble does)."""
        super().__init__()
        import open_clip
        from open_clip.model import CLIPTextCfg, _build_text_tower

        self.config = config
        if config.model_name:
            weights = str(asset_path(config.weights, "text-encoder weights")) if config.weights and load_weights \
                else None
            try:  # open_clip's random init draws from the global RNG: from the config's seed, every peer's
                with seeded(config.seed):  # tower is the same (and the caller's RNG untouched)
                    clip = open_clip.create_model(config.model_name, pretrained=weights, device="cpu")
            except (RuntimeError, FileNotFoundError, ValueError) as e:
                raise ParisError(f"cannot load open_clip model {config.model_name!r}: {e}") from None
            self.tower = _TowerOfClip(clip)
            self.width = clip.transformer.width
        else:
            if config.weights:
                raise ParisError("pretrained text weights need a model_name (an open_clip architecture)")
            with seeded(config.seed):
                cfg = CLIPTextCfg(context_length=config.context_length, width=config.width, heads=config.heads,
                                  layers=config.layers, output_tokens=True, ls_init_value=config.layer_scale)
                self.tower = _build_text_tower(embed_dim=config.width, text_cfg=cfg)
            self.width = config.width
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token states, exactly zero at padding positions (token id 0), as Wan zero-pads its T5 states:
        the backbone reads which positions are real from that (expert.backbone.condition_on_text)."""
        tokens = tokens[:, : self.config.context_length].long()
        states = self.tower(tokens)
        if isinstance(states, tuple):
            states = states[1]
        return states.float() * (tokens != 0).unsqueeze(-1)


    @torch.no_grad()
    def encode_captions(self, captions: list[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Per-token states of `captions`, tokenized with the BPE tokenizer (what a sampler asks)."""
        from expert.shards import tokenize

        tokens = torch.from_numpy(tokenize(list(captions)))
        return self(tokens if device is None else tokens.to(device))


def load_text_encoder(config: TextEncoderConfig, *, load_weights: bool = True) -> nn.Module:
    """The run's text encoder: an open_clip tower (`TextEncoder`) or a `transformers` one (expert.text_hf);
    both have `.width` and `encode_captions(captions)`."""
    if config.family == "transformers":
        from expert.text_hf import HFTextEncoder

        return HFTextEncoder(config)
    return TextEncoder(config, load_weights=load_weights)


class _TowerOfClip(nn.Module):
    """Per-token states of a full open_clip CLIP model's text tower (its `encode_text` only pools)."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        c = self.clip
        if hasattr(c, "text"):  # custom-text CLIP: a TextTransformer
            c.text.output_tokens = True
            return c.text(tokens)[1]
        n = tokens.shape[1]
        x = c.token_embedding(tokens) + c.positional_embedding[:n]
        x = c.transformer(x, attn_mask=c.attn_mask[:n, :n])
        return c.ln_final(x)


def write_tokenizer(folder: Path, context_length: int) -> None:
    """A `tokenizer/` folder: the BPE vocabulary (open_clip's, which ships with the package) and how captions
    are tokenized with it, so that an ensemble folder says everything a sampler needs to read a prompt."""
    from open_clip.tokenizer import default_bpe

    vocab = Path(default_bpe())
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(vocab, folder / vocab.name)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "open_clip.tokenizer.SimpleTokenizer", "vocab_file": vocab.name,
        "context_length": context_length, "pad_token_id": 0, "lowercase": True}, indent=2))
