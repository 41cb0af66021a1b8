"""Resolution profiles as value objects (Polygraphy's ``Profile``/``ShapeTuple``, keyed by Sana's resolutions).

A profile named by its base resolution (512, 1024, 2048, 4096) covers every aspect-ratio bucket Sana's pipeline
bins to at that base (diffusers' ``ASPECT_RATIO_*_BIN`` tables) as min/opt/max sizes of the named dynamic axes
of the exported graphs: ``batch`` (1 .. 2×max-batch: classifier-free guidance doubles it), ``latent_h`` and
``latent_w`` (pixels / 32), ``text_len`` (the transformer's caption length) and ``seq`` (the text encoder's
tokens, room for Sana's complex human instruction). A static profile fixes the image size and the text lengths
but keeps the batch a range (1 .. 2×max-batch), so one engine runs the CFG-doubled transformer batch and the
DC-AE decode at batch 1 alike.

Profiles know nothing about a model: :meth:`Profile.input_shapes` resolves them against the input patterns of
an export manifest (``["batch", 32, "latent_h", "latent_w"]``), which is what engines are built with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sana_deploy.contract import PROFILE_BASES, SIZE_FREE_COMPONENTS, bucket_sizes, check_base
from sana_deploy.errors import ShapeError, fail
from sana_deploy.models.config import TEXT_MAX_LENGTH, TEXT_MIN_TOKENS, VAE_SCALE

# Gemma-2 sees the complex human instruction + 298 prompt tokens (docs/SANA.md#text-encoder): ~550 tokens with
# Gemma's tokenizer, ~1360 with sana-tiny's byte tokenizer. 2048 covers both.
TEXT_ENCODER_MAX_SEQ = 2048
RESOLUTION_AXES = ("latent_h", "latent_w")


@dataclass(frozen=True)
class ShapeTuple:
    """min/opt/max of one axis (or of a whole tensor shape)."""

    min: int | tuple[int, ...]
    opt: int | tuple[int, ...]
    max: int | tuple[int, ...]

    def contains(self, value: int) -> bool:
        return self.min <= value <= self.max

    def to_json(self) -> list:
        return [_listify(self.min), _listify(self.opt), _listify(self.max)]

    @classmethod
    def from_json(cls, data: list) -> ShapeTuple:
        return cls(*(tuple(v) if isinstance(v, list) else v for v in data))


def _listify(v: int | tuple[int, ...]) -> int | list[int]:
    return list(v) if isinstance(v, tuple) else v


def check_max_batch(max_batch: object) -> int:
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1 or max_batch > 32:
        fail(
            f"max-batch must be an integer from 1 to 32 (images per request; engines take twice that for "
            f"classifier-free guidance), got {max_batch!r}.",
            ShapeError,
        )
    return max_batch


@dataclass(frozen=True)
class Profile:
    """min/opt/max per named axis. ``name`` is ``"1024"`` (dynamic buckets) or ``"1024-static"``."""

    name: str
    axes: dict[str, ShapeTuple] = field(hash=False)
    static: bool = False

    @classmethod
    def from_base(cls, base: int, max_batch: int = 1, static: bool = False) -> Profile:
        base, max_batch = check_base(base), check_max_batch(max_batch)
        batch = 2 * max_batch
        if static:
            return cls.exact(base, base, batch, name=f"{base}-static")
        buckets = bucket_sizes(base)
        hs = [h // VAE_SCALE for h, _ in buckets]
        ws = [w // VAE_SCALE for _, w in buckets]
        side = base // VAE_SCALE
        return cls(
            name=str(base),
            axes={
                "batch": ShapeTuple(1, batch, batch),
                "latent_h": ShapeTuple(min(hs), side, max(hs)),
                "latent_w": ShapeTuple(min(ws), side, max(ws)),
                "text_len": ShapeTuple(TEXT_MIN_TOKENS, TEXT_MAX_LENGTH, TEXT_MAX_LENGTH),
                "seq": ShapeTuple(TEXT_MIN_TOKENS, TEXT_MAX_LENGTH, TEXT_ENCODER_MAX_SEQ),
            },
        )

    @classmethod
    def exact(cls, height: int, width: int, batch: int, name: str | None = None) -> Profile:
        """A static profile: one image size, text lengths fixed at their maxima, engine batch 1 .. ``batch``.

        The batch stays a range because one engine serves two batches per request: the transformer's CFG batch
        (2 × images) and the DC-AE decode (1 × images). Backends specialise every axis whose min == max.
        """
        for what, v in (("height", height), ("width", width)):
            if v <= 0 or v % VAE_SCALE:
                fail(f"{what} {v} must be a positive multiple of {VAE_SCALE} (the DC-AE's downsampling).", ShapeError)
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            fail(f"batch must be a positive integer (the largest engine batch), got {batch!r}.", ShapeError)
        one = lambda v: ShapeTuple(v, v, v)  # noqa: E731
        return cls(
            name=name or f"{height}x{width}-b{batch}",
            axes={
                "batch": ShapeTuple(1, batch, batch),
                "latent_h": one(height // VAE_SCALE),
                "latent_w": one(width // VAE_SCALE),
                "text_len": one(TEXT_MAX_LENGTH),
                "seq": one(TEXT_ENCODER_MAX_SEQ),
            },
            static=True,
        )

    # --- what it covers -------------------------------------------------------------------------------------
    def covers(self, height: int, width: int, batch: int, component: str = "transformer") -> bool:
        """Whether an engine built for this profile runs an image of ``height``×``width`` pixels at ``batch``.

        The text encoder and the caption K/V graph are not resolution-bound: only the batch counts for them.
        """
        if not self.axes["batch"].contains(batch):
            return False
        if component in SIZE_FREE_COMPONENTS:
            return True
        if height % VAE_SCALE or width % VAE_SCALE:
            return False
        return self.axes["latent_h"].contains(height // VAE_SCALE) and self.axes["latent_w"].contains(
            width // VAE_SCALE
        )

    def fit(self, height: int, width: int) -> float:
        """How far a request is from the shapes the engine was tuned for (0 = at opt; smaller is better)."""
        opt = self.axes["latent_h"].opt * self.axes["latent_w"].opt * VAE_SCALE**2
        return abs(math.log(max(height * width, 1) / opt))

    @property
    def base(self) -> int:
        return int(self.name.split("-")[0]) if self.name.split("-")[0].isdigit() else 0

    # --- resolving against a graph --------------------------------------------------------------------------
    def input_shapes(self, inputs: list[dict]) -> dict[str, ShapeTuple]:
        """Shapes per input for a manifest's ``inputs`` (``{"name", "shape": [axis name | int, ...]}``)."""
        shapes = {}
        for spec in inputs:
            dims = [self._axis(d) for d in spec["shape"]]
            shapes[spec["name"]] = ShapeTuple(*(tuple(d[i] for d in dims) for i in range(3)))
        return shapes

    def _axis(self, dim: int | str) -> tuple[int, int, int]:
        if isinstance(dim, int):
            return (dim, dim, dim)
        factor, _, axis = dim.rpartition("*")  # a derived side, e.g. the DC-AE encoder's "32*latent_h"
        if factor.isdigit() and axis in self.axes:
            return tuple(int(factor) * v for v in self._axis(axis))  # type: ignore[return-value]
        if dim not in self.axes:
            fail(
                f"Profile {self.name} has no range for axis {dim!r}; re-export the graph with sana-deploy.", ShapeError
            )
        a = self.axes[dim]
        return (a.min, a.opt, a.max)

    def to_json(self) -> dict:
        return {"name": self.name, "static": self.static, "axes": {k: v.to_json() for k, v in self.axes.items()}}

    @classmethod
    def from_json(cls, data: dict) -> Profile:
        axes = {k: ShapeTuple.from_json(v) for k, v in data["axes"].items()}
        return cls(name=data["name"], axes=axes, static=bool(data.get("static", False)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Profile) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(repr(self.to_json()))

    def describe(self, component: str = "transformer") -> str:
        """Human-readable ranges, e.g. ``512-2048 x 512-2048 px, batch 1-2``."""
        b = self.axes["batch"]
        batch = f"batch {b.min}" if b.min == b.max else f"batch {b.min}-{b.max}"
        if component == "text_encoder":
            s = self.axes["seq"]
            return f"seq {s.min}-{s.max}, {batch}"
        if component in SIZE_FREE_COMPONENTS:
            return f"any size, {batch}"
        h, w = self.axes["latent_h"], self.axes["latent_w"]
        px = lambda t: f"{t.min * VAE_SCALE}" if t.min == t.max else f"{t.min * VAE_SCALE}-{t.max * VAE_SCALE}"  # noqa: E731
        return f"{px(h)} x {px(w)} px, {batch}"


def profile_for_request(height: int, width: int, batch: int, component: str = "transformer") -> Profile:
    """The dynamic base profile that covers a request with its opt shape closest to it (what a miss builds)."""
    max_batch = min(max(1, math.ceil(batch / 2)), 32)
    covering = [
        p
        for b in PROFILE_BASES
        if (p := Profile.from_base(b, max_batch=max_batch)).covers(height, width, batch, component)
    ]
    if not covering:
        fail(
            f"No profile covers {height}x{width} at batch {batch}: sizes must be multiples of {VAE_SCALE} within a "
            f"profile's aspect-ratio range ({', '.join(p_range(b) for b in PROFILE_BASES)}).",
            ShapeError,
        )
    return min(covering, key=lambda p: p.fit(height, width))


def p_range(base: int) -> str:
    p = Profile.from_base(base)
    return f"{base}: {p.describe()}"
