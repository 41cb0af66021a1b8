"""The calibration prompts: a built-in set (the default) or a text file, one prompt a line."""

from __future__ import annotations

from pathlib import Path

from sana_deploy.errors import fail
from sana_deploy.export.quantized import QuantizeError

# Varied subjects, styles and lengths (people, animals, scenes, text, objects, art styles, close-ups, wide shots),
# so that the activations of every layer see more than one kind of image.
DEFAULT_PROMPTS: tuple[str, ...] = (
    "a red fox standing in fresh snow, morning light, photograph",
    "portrait of an old fisherman with a grey beard, dramatic lighting, 85mm",
    "a bustling city street at night with neon signs and rain reflections",
    "a watercolor painting of a lighthouse on a rocky coast",
    "a bowl of ramen with an egg and green onions, top-down food photography",
    "a cozy reading room with wooden shelves full of books and a fireplace",
    "an astronaut riding a horse on the moon, digital art",
    'a vintage poster with the words "SANA" in bold letters, art deco style',
)
MAX_PROMPTS_FILE_BYTES = 4 << 20


def read_calibration_prompts(path: str | Path | None) -> list[str]:
    """The prompts of ``path`` (UTF-8, one per line; blank lines and ``#`` comments skipped), or the built-in set
    when ``path`` is None. An empty set is an error."""
    if path is None:
        return list(DEFAULT_PROMPTS)
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PROMPTS_FILE_BYTES + 1)
    except OSError as exc:
        fail(f"Cannot read --calib-prompts {path}: {(exc.strerror or str(exc)).lower()}.", QuantizeError)
    if len(data) > MAX_PROMPTS_FILE_BYTES or b"\0" in data:
        fail(f"--calib-prompts {path} is not a text file of prompts (binary, or over 4 MiB).", QuantizeError)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        fail(f"--calib-prompts {path} is not UTF-8 text; pass a UTF-8 file, one prompt a line.", QuantizeError)
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return check_prompts(prompts, str(path))


def check_prompts(prompts: list[str], where: str = "the prompt list") -> list[str]:
    if not prompts:
        fail(
            f"The calibration set is empty: {where} has no prompts. Give one prompt a line (blank lines and # "
            f"comments are skipped), or leave --calib-prompts out to calibrate on the built-in set of "
            f"{len(DEFAULT_PROMPTS)} prompts.",
            QuantizeError,
        )
    return prompts
