"""MIN:OPT:MAX shape profiles for the batch axis and the image side, parsed and validated.

One profile drives three things: the example input of the exporter (the OPT point), the shapes of
the parity check (MIN, OPT and MAX capped for CPU, padded to three distinct batch sizes) and the
TensorRT optimisation profile.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Union

from vitcompress.errors import VitCompressError

ProfileLike = Union[str, int, Sequence[int], "Profile", None]

#: Largest value a profile takes (a sanity bound: batch and image side).
MAX_SIZE = 65536
#: Largest batch the CPU parity check runs (the MAX of a profile is capped to this).
PARITY_BATCH_CAP = 16


@dataclass(frozen=True)
class Profile:
    """An inclusive range of sizes with the size to optimise for: ``min <= opt <= max``."""

    min: int
    opt: int
    max: int

    def to_dict(self) -> dict:
        return asdict(self)

    def as_tuple(self) -> tuple[int, int, int]:
        return self.min, self.opt, self.max

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


def parse_profile(value: ProfileLike, what: str = "batch") -> Profile:
    """``'1:8:32'``, ``'8'``, ``8``, ``(1, 8, 32)`` or a ``Profile`` -> validated ``Profile``."""
    if isinstance(value, Profile):
        parts = list(value.as_tuple())
    elif isinstance(value, str):
        try:
            parts = [int(p) for p in value.strip().split(":")]
        except ValueError:
            raise VitCompressError(
                f"{what} {value!r} is not MIN:OPT:MAX of integers; write e.g. 1:8:32", params=[what]
            ) from None
    elif isinstance(value, int):
        parts = [value]
    else:
        try:
            parts = [int(p) for p in value]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise VitCompressError(
                f"{what} profile {value!r} is not MIN:OPT:MAX; pass e.g. (1, 8, 32)", params=[what]
            ) from None
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise VitCompressError(
            f"{what} profile {value!r} needs 1 or 3 values (MIN:OPT:MAX); write e.g. 1:8:32", params=[what]
        )
    lo, opt, hi = parts
    if hi > MAX_SIZE:
        raise VitCompressError(
            f"{what} profile {lo}:{opt}:{hi} has MAX above {MAX_SIZE}; use smaller sizes", params=[what]
        )
    if lo < 1:
        raise VitCompressError(f"{what} profile {lo}:{opt}:{hi} has MIN < 1; sizes must be positive", params=[what])
    if not lo <= opt <= hi:
        raise VitCompressError(f"{what} profile {lo}:{opt}:{hi} is impossible: need MIN <= OPT <= MAX", params=[what])
    return Profile(lo, opt, hi)


def check_img_profile(profile: Profile, patch: int) -> None:
    """Every image side of the profile must be a multiple of the patch size."""
    bad = [s for s in profile.as_tuple() if s % patch]
    if bad:
        raise VitCompressError(
            f"img_size {profile} has {bad[0]}, not a multiple of the patch size {patch}; "
            f"use multiples of {patch} (e.g. {max(patch, bad[0] // patch * patch)})",
            params=["img_size"],
        )


def default_img_profile(native: int, patch: int) -> Profile:
    """Half to one and a half times the model's native image side, in patch multiples."""
    lo = max(patch, (native // 2) // patch * patch)
    hi = max(native, (native * 3 // 2) // patch * patch)
    return Profile(lo, native, hi)


def parity_batches(profile: Profile, cap: int = PARITY_BATCH_CAP, *, within: bool = False) -> list[int]:
    """Three distinct batch sizes, ascending: MIN, OPT and MAX (MAX capped to ``cap`` for CPU),
    padded with the smallest other sizes where they coincide (``8:8:8`` -> 1, 2, 8;
    ``2:2:2`` -> 1, 2, 3; ``1:1:4`` -> 1, 2, 4).

    The batch axis of an exported graph is always dynamic, so ONNX Runtime takes any size and the
    padding may leave the profile. ``within=True`` (a TensorRT engine, which accepts only its
    profile) pads only with sizes from MIN to the capped MAX, so a profile with fewer than three
    sizes there (``8:8:8``, ``2:2:3``) gives fewer than three."""
    hi = max(profile.min, min(profile.max, cap))
    sizes = {profile.min, profile.opt, hi}
    size = profile.min if within else 1
    while len(sizes) < 3 and (not within or size <= hi):
        sizes.add(size)
        size += 1
    return sorted(sizes)


def parity_img_sizes(profile: Profile | None) -> list[int | None]:
    """With a dynamic image size: OPT first, then MIN or MAX (whichever differs); else [None]."""
    if profile is None:
        return [None]
    sizes = [profile.opt]
    for s in (profile.min, profile.max):
        if s not in sizes:
            sizes.append(s)
            break
    return sizes


def example_batch(profile: Profile, avoid: Sequence[int] = ()) -> int:
    """Batch size of the example input: OPT, but never 1 (the exporter would specialise the axis)
    and never equal to an image side (so that no two dynamic axes look alike)."""
    b = max(2, profile.opt)
    while b in avoid:
        b += 1
    return b
