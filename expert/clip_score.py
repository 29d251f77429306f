"""CLIP text-video similarity: how well a generated video matches its prompt, by a pretrained open_clip model.

Score of one video = mean over its frames of cos(image embedding of the frame, text embedding of the prompt),
reported as the raw cosine (not ×100), the scale on which Paris 2.0 reports 0.2032 → 0.2178. Frames go through
the model's own evaluation transform (resize, centre crop, normalise). Pretrained weights come from a local
file only: a missing path is an error, never a download. Models whose tokenizer lives on the Hugging Face hub
need that tokenizer in the local cache.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from expert.seeding import seeded
from protocol.errors import ParisError


class ClipScorer:
    def __init__(self, model: nn.Module, preprocess: Callable[[Image.Image], torch.Tensor],
                 tokenizer: Callable[[list[str]], torch.Tensor], *, device: torch.device | str = "cpu",
                 batch: int = 64) -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.preprocess, self.tokenizer = preprocess, tokenizer
        self.device, self.batch = torch.device(device), batch

    @classmethod
    def from_pretrained(cls, model_name: str, weights: str | Path, *, device: torch.device | str = "cpu",
                        batch: int = 64) -> ClipScorer:
        """The open_clip architecture `model_name` with the weights file `weights` (local)."""
        import open_clip

        path = Path(weights)
        if not path.is_file():
            raise ParisError(f"CLIP weights {path} not found (give a local open_clip weights file)")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(path),
                                                                         device=device)
            tokenizer = open_clip.get_tokenizer(model_name)
        except Exception as e:  # open_clip raises RuntimeError, ValueError, KeyError … for a file that does not fit
            raise ParisError(f"cannot load open_clip {model_name!r} from {path}: "
                             f"{str(e).splitlines()[0] if str(e) else e!r}") from None
        return cls(model, preprocess, tokenizer, device=device, batch=batch)

    @classmethod
    def random_init(cls, model_name: str, *, seed: int = 0, device: torch.device | str = "cpu") -> ClipScorer:
        """The same architecture with random weights: meaningless scores, real plumbing (for tests)."""
        import open_clip

        with seeded(seed):
            model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None, device=device)
        return cls(model, preprocess, open_clip.get_tokenizer(model_name), device=device)

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        emb = self.model.encode_text(self.tokenizer(prompts).to(self.device)).float()
        return emb / emb.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def frame_embeddings(self, videos: np.ndarray) -> torch.Tensor:
        """uint8 N×T×H×W×3 → N×T×D unit vectors."""
        n, t = videos.shape[:2]
        frames = videos.reshape(n * t, *videos.shape[2:])
        out = []
        for i in range(0, len(frames), self.batch):
            images = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames[i : i + self.batch]])
            out.append(self.model.encode_image(images.to(self.device)).float())
        emb = torch.cat(out)
        return (emb / emb.norm(dim=-1, keepdim=True)).reshape(n, t, -1)

    def scores(self, videos: np.ndarray, prompts: list[str]) -> np.ndarray:
        """Per video i: mean over frames of cos(frame, prompts[i])."""
        if len(videos) != len(prompts):
            raise ParisError(f"{len(videos)} videos for {len(prompts)} prompts")
        frames, text = self.frame_embeddings(np.asarray(videos)), self.text_embeddings(prompts)
        return torch.einsum("ntd,nd->nt", frames, text).mean(1).cpu().numpy().astype(np.float64)
