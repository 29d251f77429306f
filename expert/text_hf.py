"""A `transformers` text encoder (T5 / UMT5 encoder as Wan and LTX-Video use, CLIP text model as SD uses) from
a local `save_pretrained` folder holding the model and its tokenizer.

Such encoders are large (UMT5-XXL: 5.7 B parameters) and no volunteer GPU should spend memory on them, so a
run computes every caption's states once at `run init` (expert.latent_data) and ships them with the data;
only a sampler, reading new prompts, loads the encoder. A folder whose class is not one of these encoders, or
whose weights do not fit its config, is a one-line error (never a randomly initialised encoder).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from expert.assets import asset_path
from protocol.errors import ParisError
from protocol.model import Asset, TextEncoderConfig

ENCODERS = ("T5EncoderModel", "UMT5EncoderModel", "CLIPTextModel", "CLIPTextModelWithProjection")
_TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "vocab.json")


def transformers_text(folder: Path, asset: Asset, context_length: int) -> TextEncoderConfig:
    """The config of the encoder in `folder` (the asset `asset`), read from its `config.json` alone (no weight
    is loaded): its class, its hidden size, and the tokens it reads (at most what its positions allow)."""
    folder = Path(folder)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ParisError(f"{folder} is not a transformers model folder (config.json: {e})") from None
    name = (config.get("architectures") or [None])[0]
    if name not in ENCODERS:
        raise ParisError(f"{folder} holds a {name or 'model of unknown class'}, not a text encoder "
                         f"({', '.join(ENCODERS)})")
    if not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise ParisError(f"{folder} has no tokenizer: save it into the folder too (tokenizer.save_pretrained)")
    width = config.get("d_model") or config.get("hidden_size")
    if not isinstance(width, int):
        raise ParisError(f"{folder}/config.json gives no hidden size (d_model / hidden_size)")
    limit = config.get("max_position_embeddings") or 512  # T5's relative positions have no limit of their own
    return TextEncoderConfig(family="transformers", model_name=name, weights=asset, width=width,
                             context_length=min(context_length, limit, 512))


class HFTextEncoder(nn.Module):
    """captions → per-token states (N×L×width float32, L = config.context_length), exactly zero at padding."""

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        import transformers

        assert config.weights is not None and config.model_name in ENCODERS
        folder = asset_path(config.weights, "text encoder")
        self.config, self.width = config, config.width
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
            self.model, info = getattr(transformers, config.model_name).from_pretrained(
                folder, output_loading_info=True)
        except (OSError, ValueError) as e:
            raise ParisError(f"cannot load the text encoder in {folder}: {str(e).splitlines()[0]}") from None
        except RuntimeError:  # transformers refuses weights of other shapes than the config's (after a report)
            raise ParisError(f"the weights in {folder} do not fit its config (tensors of other shapes)") from None
        bad = [*info.get("missing_keys", ()), *info.get("mismatched_keys", ())]
        if bad:
            raise ParisError(f"the weights in {folder} do not fit its config ({len(bad)} tensors missing or "
                             f"mis-shaped, e.g. {sorted(map(str, bad))[0]})")
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def encode_captions(self, captions: list[str], device: torch.device | str | None = None) -> torch.Tensor:
        device = device or next(self.model.parameters()).device
        enc = self.tokenizer(list(captions), padding="max_length", max_length=self.config.context_length,
                             truncation=True, return_tensors="pt")
        mask = enc["attention_mask"].to(device)
        states = self.model(input_ids=enc["input_ids"].to(device), attention_mask=mask).last_hidden_state
        return states.float() * mask.unsqueeze(-1)
