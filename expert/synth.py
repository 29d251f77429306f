"""The built-in "moving shapes" text-to-video data set.

Procedural and deterministic: clip i of seed s depends only on (s, i), so any range of clips can be
regenerated anywhere. Because the generator knows every clip's attributes (shape, colour, motion,
background, object count), the data set has real cluster structure and gives honest offline metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan")
COLOUR_RGB = np.array(
    [[230, 40, 40], [40, 200, 60], [50, 90, 240], [240, 220, 40], [220, 50, 220], [40, 220, 230]], dtype=np.float32
)
MOTIONS = ("left", "right", "up", "down", "diagonal", "rotate", "grow")
BACKGROUNDS = ("dark", "gradient", "striped")
# Version 2 of the generator (data manifests say which): objects start at most 15° from upright, because a
# square turned 45° is a diamond (and a diamond a square), so version 1's uniform 0–90° start angle made the
# two shapes indistinguishable; and objects are drawn larger (radius 15–22 % of the frame, was 12–19 %) so
# a shape survives 32×32 pixels. The random draws are the same, so captions, colours and paths are unchanged.
GENERATOR_VERSION = 2
MAX_TILT = np.pi / 12
RADIUS = (0.15, 0.22)
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "colour": COLOURS,
    "motion": MOTIONS,
    "background": BACKGROUNDS,
    "objects": ("one", "two"),
}

MOTION_PHRASES = {
    "left": ("moving left", "sliding to the left", "drifting left"),
    "right": ("moving right", "sliding to the right", "drifting right"),
    "up": ("moving up", "rising", "floating upward"),
    "down": ("moving down", "falling", "sinking downward"),
    "diagonal": ("moving diagonally", "crossing the frame diagonally", "gliding on a diagonal"),
    "rotate": ("rotating", "spinning in place", "turning around"),
    "grow": ("growing", "getting bigger", "expanding"),
}
_TEMPLATES = (
    "{obj} on a {bg} background",
    "video of {obj} over a {bg} background",
    "on a {bg} backdrop, {obj}",
    "{bg} scene with {obj}",
)


@dataclass(frozen=True)
class ObjectSpec:
    shape: int
    colour: int
    motion: int


@dataclass(frozen=True)
class ClipSpec:
    objects: tuple[ObjectSpec, ...]
    background: int
    caption: str

    @property
    def attributes(self) -> tuple[int, int, int, int, int]:
        o = self.objects[0]
        return (o.shape, o.colour, o.motion, self.background, len(self.objects) - 1)

    def present(self) -> np.ndarray:
        """A×V bool (ATTRIBUTES order, V the largest vocabulary): which values the clip shows. With two
        objects a video cannot say which was described first, so either object's shape (colour, motion)
        counts as the clip's."""
        out = np.zeros((len(ATTRIBUTES), max(len(v) for v in ATTRIBUTES.values())), dtype=bool)
        for o in self.objects:
            out[0, o.shape] = out[1, o.colour] = out[2, o.motion] = True
        out[3, self.background] = out[4, len(self.objects) - 1] = True
        return out


def _describe(o: ObjectSpec, rng: np.random.Generator) -> str:
    phrase = MOTION_PHRASES[MOTIONS[o.motion]][rng.integers(3)]
    return f"{COLOURS[o.colour]} {SHAPES[o.shape]} {phrase}"


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test in the object's own unit frame (radius 1)."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.85
    if shape == "diamond":
        return au + av <= 1.15
    if shape == "triangle":
        return (v <= 0.8) & (v >= -1.0) & (au <= (v + 1.0) * 0.55)
    if shape == "cross":
        return ((au <= 0.33) & (av <= 1.0)) | ((av <= 0.33) & (au <= 1.0))
    raise ValueError(shape)


def _trajectory(motion: str, t: np.ndarray, r: float, rng: np.random.Generator):
    """Centre (cx, cy), scale and angle per frame, in units of the frame size; keeps the object in view."""
    lo, hi = 0.18 + r * 0.5, 0.82 - r * 0.5
    travel = rng.uniform(0.35, 0.5)
    a = rng.uniform(lo, hi)
    b0 = rng.uniform(lo + travel * 0.5, hi - travel * 0.5) if hi - lo > travel else (lo + hi) / 2
    start, end = b0 + travel / 2, b0 - travel / 2
    cx = np.full_like(t, a)
    cy = np.full_like(t, rng.uniform(lo, hi))
    scale = np.ones_like(t)
    angle = np.full_like(t, rng.uniform(-MAX_TILT, MAX_TILT))
    if motion == "left":
        cx = start + (end - start) * t
    elif motion == "right":
        cx = end + (start - end) * t
    elif motion == "up":
        cx, cy = cy, start + (end - start) * t
    elif motion == "down":
        cx, cy = cy, end + (start - end) * t
    elif motion == "diagonal":
        sx, sy = rng.choice([-1.0, 1.0], size=2)
        cx = 0.5 - sx * travel / 2 + sx * travel * t
        cy = 0.5 - sy * travel / 2 + sy * travel * t
    elif motion == "rotate":
        angle = angle + rng.choice([-1.0, 1.0]) * (np.pi / 2) * t
    elif motion == "grow":
        scale = 0.55 + 0.9 * t
    return cx, cy, scale, angle


def _background(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "dark":
        return np.broadcast_to(rng.uniform(10, 40, size=3).astype(np.float32), (h, w, 3)).copy()
    if kind == "gradient":
        top, bottom = rng.uniform(60, 110, size=3), rng.uniform(140, 190, size=3)
        f = (yy / max(h - 1, 1))[..., None]
        return (top * (1 - f) + bottom * f).astype(np.float32)
    period = rng.uniform(6, 10) * h / 32
    stripe = ((xx + yy) // max(period / 2, 1)) % 2
    c0, c1 = rng.uniform(50, 80), rng.uniform(110, 140)
    return np.repeat((c0 + (c1 - c0) * stripe)[..., None], 3, axis=2).astype(np.float32)


def clip_spec(seed: int, index: int) -> tuple[ClipSpec, np.random.Generator]:
    rng = np.random.default_rng([seed, index])
    n = 1 if rng.random() < 0.7 else 2
    objects = []
    for _ in range(n):
        shape = int(rng.integers(len(SHAPES)))
        motion = int(rng.integers(len(MOTIONS)))
        if SHAPES[shape] == "circle" and MOTIONS[motion] == "rotate":
            motion = MOTIONS.index("grow")  # a rotating circle would look static: keep captions truthful
        objects.append(ObjectSpec(shape, int(rng.integers(len(COLOURS))), motion))
    background = int(rng.integers(len(BACKGROUNDS)))
    obj = " and ".join("a " + _describe(o, rng) for o in objects)
    caption = _TEMPLATES[rng.integers(len(_TEMPLATES))].format(obj=obj, bg=BACKGROUNDS[background])
    return ClipSpec(tuple(objects), background, caption), rng


def render_clip(seed: int, index: int, frames: int = 16, height: int = 32,
                width: int = 32) -> tuple[np.ndarray, ClipSpec]:
    """Clip `index` of data set `seed` as uint8 T×H×W×3 plus its spec (caption and attributes)."""
    spec, rng = clip_spec(seed, index)
    size = float(min(height, width))
    background = _background(BACKGROUNDS[spec.background], height, width, rng)
    canvas = np.broadcast_to(background, (frames, height, width, 3)).copy()
    t = np.linspace(0.0, 1.0, frames, dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    xx, yy = (xx + 0.5) / size, (yy + 0.5) / size
    for o in spec.objects:
        r = float(rng.uniform(*RADIUS))
        cx, cy, scale, angle = _trajectory(MOTIONS[o.motion], t, r, rng)
        dx = xx[None] - cx[:, None, None] * (width / size)
        dy = yy[None] - cy[:, None, None] * (height / size)
        cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
        rs = (r * scale)[:, None, None]
        u, v = (dx * cos + dy * sin) / rs, (-dx * sin + dy * cos) / rs
        mask = _shape_mask(SHAPES[o.shape], u, v)
        shade = COLOUR_RGB[o.colour] * rng.uniform(0.85, 1.0)
        canvas[mask] = shade
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8), spec
