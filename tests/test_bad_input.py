"""Every bad input to every command is a message: a non-zero exit, text naming the problem, never a traceback.

This table is the one place a command's bad inputs are listed; a new command or option adds its rows here
(``test_every_command_has_rows`` fails for a command without one). A row is a case id, the command's argv, an
optional ``setup`` that writes the files the case needs into its folder (the command runs there, so paths are
relative), and the text the output must contain (one of several when a tuple). Rows whose right answer is to go on
(a damaged index the cache rebuilds) say ``exit=0``; they still must not print a traceback.

Each case runs in its own process. To keep the table fast, a server process imports ``sana_deploy.cli`` (and
torch) once and forks a fresh child per case, which runs ``main`` as the console script does: its own exit status,
stdout and stderr, and an uncaught exception prints its traceback as the interpreter would. ``fresh=True`` rows run
a new ``python -m sana_deploy`` instead. A ``prelude`` is Python the child runs before the command: it simulates
what a test machine cannot produce for real (a read-only filesystem for one folder, a missing package).
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from sana_deploy.runtime.generate import MAX_STEPS

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
SERVE_TIMEOUT_S = 60.0  # a serve case that starts a server after all is killed then (and fails)


@dataclass(frozen=True)
class Workspace:
    """The folder a case runs in, and sana-tiny's transformer weights for the checkpoint cases."""

    tmp: Path
    _state_dict: Callable[[], dict[str, torch.Tensor]]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone().contiguous() for k, v in self._state_dict().items()}


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    message: str | tuple[str, ...]  # the output contains this (or one of these)
    setup: Callable[[Workspace], None] | None = None
    exit: int | None = None  # None: any non-zero status
    prelude: str = ""
    env: dict[str, str] = field(default_factory=dict)
    fresh: bool = False
    timeout: float = 180.0
    marks: tuple = ()
    after: Callable[[Workspace], bool] | None = None  # holds once the command has run (e.g. nothing was created)


# ----- setups: the files a case needs, written into its folder -----


def _lora_bytes(
    width: int = 64, module: str = "transformer_blocks.0.attn1.to_q", prefix: str = "transformer."
) -> bytes:
    """A PEFT-layout LoRA file for sana-tiny (hidden size 64) or, with another width, for another model size."""
    from safetensors.torch import save

    key = f"{prefix}{module}"
    return save({f"{key}.lora_A.weight": torch.ones(4, width), f"{key}.lora_B.weight": torch.ones(width, 4)})


def _png_bytes() -> bytes:
    """A small valid PNG (an input image for img2img / ControlNet cases)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 24), (90, 120, 200)).save(buf, format="PNG")
    return buf.getvalue()


# a Sana ControlNet config for a model of hidden size 96 (sana-tiny's is 64)
_CN_96 = '{"_class_name": "SanaControlNetModel", "num_attention_heads": 3, "attention_head_dim": 32, "num_layers": 1, '
_CN_96 += '"cross_attention_dim": 96, "caption_channels": 64, "num_cross_attention_heads": 2, '
_CN_96 += '"cross_attention_head_dim": 48}'


# ... and one that fits sana-tiny (hidden size 64)
_CN_64 = _CN_96.replace('"num_attention_heads": 3', '"num_attention_heads": 2').replace(
    '"cross_attention_dim": 96', '"cross_attention_dim": 64'
)
_CN_64 = _CN_64.replace('"cross_attention_head_dim": 48', '"cross_attention_head_dim": 32')


def _write(name: str, data: bytes | str) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        path = ws.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return setup


def _folders(*names: str, mode: int | None = None) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        for name in names:
            (ws.tmp / name).mkdir(parents=True, exist_ok=True)
            if mode is not None:
                (ws.tmp / name).chmod(mode)

    return setup


def _all(*setups: Callable[[Workspace], None]) -> Callable[[Workspace], None]:
    def setup(ws: Workspace) -> None:
        for s in setups:
            s(ws)

    return setup


def _checkpoint(name: str, edit: Callable[[dict], dict], nvlabs: bool = False) -> Callable[[Workspace], None]:
    """sana-tiny's transformer weights, edited, saved as ``name`` (.safetensors or .pth; NVlabs keys if asked)."""

    def setup(ws: Workspace) -> None:
        from safetensors.torch import save_file

        from sana_deploy.models.convert import diffusers_to_nvlabs

        sd = ws.state_dict()
        sd = edit(diffusers_to_nvlabs(sd) if nvlabs else sd)
        if name.endswith(".safetensors"):
            save_file(sd, str(ws.tmp / name))
        else:
            torch.save(sd, ws.tmp / name)

    return setup


def _released_size_checkpoint(name: str, **extra: torch.Tensor) -> Callable[[Workspace], None]:
    """A few keys at the 0.6B's sizes (hidden 1152): enough for the loader to infer a released config."""

    def setup(ws: Workspace) -> None:
        from safetensors.torch import save_file

        sd = {
            "patch_embed.proj.weight": torch.zeros(1152, 32, 1, 1),
            "caption_projection.linear_1.weight": torch.zeros(1152, 8),
            "transformer_blocks.0.attn1.to_q.weight": torch.zeros(1),
            **extra,
        }
        save_file(sd, str(ws.tmp / name))

    return setup


def _diffusers_config(config: str) -> Callable[[Workspace], None]:
    return _all(_write("folder/model_index.json", "{}"), _write("folder/transformer/config.json", config))


def _only(*names: str) -> Callable[[Workspace], bool]:
    """After the command, the case's folder holds exactly ``names`` (what its setup wrote): nothing created."""
    return lambda ws: sorted(str(p.relative_to(ws.tmp)) for p in ws.tmp.rglob("*")) == sorted(names)


_MANIFEST_FORMAT = "sana-deploy/engines-manifest/1"
_NOT_ROOT = pytest.mark.skipif(AS_ROOT, reason="root writes through folder permissions")


def _readonly_fs(folder: str) -> str:
    """A prelude that makes every write under ``folder`` (relative to the case's folder) fail as on a read-only
    filesystem (EROFS): opening for writing, creating, renaming, removing."""
    return f"""
import builtins, errno, io, os
_RO = os.path.realpath({folder!r})
def _ro(path):
    try:
        p = os.path.realpath(os.fsdecode(path))
    except TypeError:
        return False
    return p == _RO or p.startswith(_RO + os.sep)
def _deny(path):
    raise OSError(errno.EROFS, "Read-only file system", os.fsdecode(path))
def _guard(fn, writes=lambda *a, **k: True, paths=1):
    def wrapper(*args, **kwargs):
        if writes(*args, **kwargs):
            for p in args[:paths]:
                if isinstance(p, (str, bytes, os.PathLike)) and _ro(p):
                    _deny(p)
        return fn(*args, **kwargs)
    return wrapper
_W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
os.open = _guard(os.open, lambda path, flags, *a, **k: bool(flags & _W))
_mode = lambda file, mode="r", *a, **k: any(c in mode for c in "wax+")
builtins.open = io.open = _guard(io.open, _mode)
for _name in ("mkdir", "makedirs", "remove", "unlink", "rmdir", "symlink", "link", "chmod", "utime", "truncate"):
    setattr(os, _name, _guard(getattr(os, _name)))
for _name in ("rename", "replace"):
    setattr(os, _name, _guard(getattr(os, _name), paths=2))
"""


# ----- the table -----

G = ("generate", "a fox", "--backend", "torch", "--engine-dir", "no-engines", "--no-progress")
CKPT = ("export", "--components", "transformer", "--out", "out", "--model")
BENCH = ("bench", "--backends", "torch", "--no-baseline", "--profiles", "512", "--runs", "1", "--warmup", "0")
SERVE = ("serve", "--port", "0", "--engines", "no-engines")

CASES: list[Case] = [
    # --- the group ---
    Case("unknown-command", ("frobnicate",), "No such command"),
    Case("unknown-option", ("models", "--bogus"), "No such option"),
    # --- generate: prompts ---
    Case("no-prompt", ("generate", "-o", "x.png"), "--prompts FILE"),
    Case("empty-prompts-file", ("generate", "--prompts", "p.txt"), "Give a PROMPT", _write("p.txt", "\n \n")),
    Case("binary-prompts-file", ("generate", "--prompts", "p.bin"), "not a text file", _write("p.bin", b"a\x00\xff\n")),
    Case("latin1-prompts-file", ("generate", "--prompts", "p.txt"), "not UTF-8", _write("p.txt", b"caf\xe9 au lait\n")),
    Case("missing-prompts-file", ("generate", "--prompts", "nope.txt"), "does not exist"),
    Case("prompts-file-is-a-folder", ("generate", "--prompts", "d"), "is a directory", _folders("d")),
    # --- generate: output path (checked before the model loads) ---
    Case("output-is-a-folder", (*G, "-o", "d"), "is a folder", _folders("d"), after=_only("d")),
    Case("output-is-a-folder-named-png", (*G, "-o", "d.png"), "is a folder", _folders("d.png")),
    Case("output-not-png", (*G, "-o", "x.jpg"), "must end in .png"),
    Case("output-under-a-file", (*G, "-o", "f/x.png"), "is a file, not a folder", _write("f", "x"), after=_only("f")),
    Case(
        "output-on-read-only-filesystem",
        (*G, "-o", "ro/x.png"),
        "read-only",
        _folders("ro"),
        prelude=_readonly_fs("ro"),
        after=_only("ro"),
    ),
    Case(
        "output-folder-not-writable",
        (*G, "-o", "locked/x.png"),
        "permission denied",
        _folders("locked", mode=0o555),
        marks=(_NOT_ROOT,),
    ),
    # --- generate: values ---
    Case("steps-too-many", (*G, "--steps", "10000", "-o", "new/x.png"), f"from 1 to {MAX_STEPS}", after=_only()),
    Case("steps-too-many-console-script", (*G, "--steps", "10000"), f"from 1 to {MAX_STEPS}", fresh=True),
    Case("steps-zero", (*G, "--steps", "0"), f"from 1 to {MAX_STEPS}"),
    Case("steps-not-a-number", (*G, "--steps", "many"), "is not a valid integer"),
    Case("cfg-scale-nan", (*G, "--cfg-scale", "nan"), "--cfg-scale must be a finite number"),
    Case("cfg-scale-inf", (*G, "--cfg-scale", "inf"), "--cfg-scale must be a finite number"),
    # Sana-Sprint: guidance is a transformer input, not CFG (checked before the model loads)
    Case("sprint-cfg-scale", (*G, "--model", "sana-sprint-tiny", "--cfg-scale", "3"), "Use --guidance-scale"),
    Case("sprint-negative-prompt", (*G, "--model", "sana-sprint-tiny", "--negative-prompt", "x"), "no --negative"),
    Case("sprint-flow-sampler", (*G, "--model", "sana-sprint-tiny", "--sampler", "flow-euler"), "runs the sCM solver"),
    Case("base-guidance-scale", (*G, "--guidance-scale", "3"), "use --cfg-scale"),
    Case("base-scm-sampler", (*G, "--sampler", "scm"), "not a Sprint model"),
    Case("height-zero", (*G, "--height", "0"), "height must be positive"),
    Case("height-too-large", (*G, "--height", "100000"), "largest supported side"),
    Case("size-not-multiple-of-32", (*G, "--height", "960", "--width", "720", "--no-resolution-binning"), "960x704"),
    Case("batch-zero", (*G, "--batch", "0"), "--batch must be a positive integer"),
    Case("seed-too-large", (*G, "--seed", str(2**70)), "--seed must be an integer"),
    Case("vae-tile-zero", (*G, "--vae-tile", "0", "--vae-tiling", "on"), "VAE tile must be at least"),
    Case("lora-missing-file", (*G, "--lora", "nope.safetensors"), "no such file"),
    Case(
        "lora-negative-weight", (*G, "--lora", "a.safetensors:-1"), "finite number >= 0", _write("a.safetensors", b"x")
    ),
    Case("lora-nan-weight", (*G, "--lora", "a.safetensors:nan"), "finite number >= 0", _write("a.safetensors", b"x")),
    Case(
        "lora-not-safetensors",
        (*G, "--lora", "a.safetensors"),
        "cannot be read as safetensors",
        _write("a.safetensors", b"junk"),
    ),
    Case(
        "lora-truncated",
        (*G, "--lora", "a.safetensors"),
        "corrupt or truncated",
        _write("a.safetensors", _lora_bytes()[:100]),
    ),
    Case("lora-pickle", (*G, "--lora", "a.bin"), "pickle", _write("a.bin", b"\x80\x04K\x01.")),
    Case(
        "lora-other-model-size",
        (*G, "--lora", "a.safetensors"),
        "another model size",
        _write("a.safetensors", _lora_bytes(width=96)),
    ),
    Case(
        "lora-keys-match-nothing",
        (*G, "--lora", "a.safetensors"),
        "does not have",
        _write("a.safetensors", _lora_bytes(module="nothing.here")),
    ),
    Case(
        "lora-text-encoder",
        (*G, "--lora", "a.safetensors"),
        "text-encoder",
        _write("a.safetensors", _lora_bytes(prefix="text_encoder.")),
    ),
    # --- generate: img2img, ControlNet, PAG (checked before the model loads) ---
    Case(
        "strength-zero",
        (*G, "--image", "in.png", "--strength", "0"),
        "strength must be a number in (0, 1]",
        _write("in.png", _png_bytes()),
    ),
    Case(
        "strength-above-one",
        (*G, "--image", "in.png", "--strength", "1.5"),
        "strength must be a number in (0, 1]",
        _write("in.png", _png_bytes()),
    ),
    Case("strength-without-image", (*G, "--strength", "0.5"), "pass --image too"),
    Case("image-not-an-image", (*G, "--image", "in.png"), "is not an image PIL can read", _write("in.png", "text")),
    Case("image-missing", (*G, "--image", "nope.png"), "no such file"),
    Case(
        "control-image-without-controlnet",
        (*G, "--control-image", "e.png"),
        "no ControlNet: load one",
        _write("e.png", _png_bytes()),
    ),
    Case(
        "controlnet-other-model-size",
        (*G, "--controlnet", "cn", "--control-image", "e.png"),
        "is for another model size",
        _all(_write("e.png", _png_bytes()), _write("cn/config.json", _CN_96)),
    ),
    Case(
        "controlnet-not-a-folder",
        (*G, "--controlnet", "cn", "--control-image", "e.png"),
        "not a diffusers Sana ControlNet folder",
        _write("e.png", _png_bytes()),
    ),
    Case("pag-layers-out-of-range", (*G, "--pag-scale", "2", "--pag-layers", "7"), "PAG layer 7 is out of range"),
    Case("pag-scale-negative", (*G, "--pag-scale", "-1"), "must be a finite number >= 0"),
    Case("unknown-sampler", (*G, "--sampler", "ddim"), "Invalid value for '--sampler'"),
    Case("unknown-backend", (*G[:3], "warp", "--no-progress"), "Invalid value for '--backend'"),
    Case("tensorrt-without-it", (*G[:3], "tensorrt", *G[4:], "--steps", "1"), ("CUDA", "not installed")),
    Case("tensorrt-rtx-without-it", (*G[:3], "tensorrt-rtx", *G[4:], "--steps", "1"), ("CUDA", "not installed")),
    # --- generate: engine folder ---
    Case(
        "engine-dir-is-a-file",
        ("generate", "a fox", "--engine-dir", "f", "--steps", "1"),
        "not a folder",
        _write("f", "x"),
    ),
    # --- models and checkpoints (export reads them as generate and serve do) ---
    Case("unknown-model", ("export", "--model", "no-such-model"), "neither a preset"),
    Case("released-preset-without-weights", ("export", "--model", "sana-1.6b-1024"), "never downloads"),
    Case("unknown-preset", (*CKPT, "c.pth", "--preset", "sana-9b"), "Unknown model preset", _write("c.pth", "x")),
    Case("folder-not-diffusers", (*CKPT, "d"), "not a diffusers Sana folder", _folders("d")),
    Case(
        "diffusers-config-wrong-type",
        (*CKPT, "folder"),
        "config.json has a value",
        _diffusers_config('{"num_attention_heads": "2"}'),
    ),
    Case("diffusers-config-not-an-object", (*CKPT, "folder"), "not a JSON object", _diffusers_config("[1, 2]")),
    Case("corrupt-checkpoint", (*CKPT, "c.pth"), "Could not read checkpoint", _write("c.pth", b"PK\x03\x04 junk")),
    Case(
        "truncated-safetensors",
        (*CKPT, "c.safetensors"),
        "complete download",
        _write("c.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{"),
    ),
    Case(
        "pickled-code",
        (*CKPT, "c.pth"),
        "weights_only",
        lambda ws: torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": print}, ws.tmp / "c.pth"),
    ),
    Case(
        "not-a-sana-checkpoint",
        (*CKPT, "c.pth"),
        "not a Sana transformer checkpoint",
        lambda ws: torch.save({"encoder.layer.0.weight": torch.zeros(2, 2)}, ws.tmp / "c.pth"),
    ),
    Case(
        "checkpoint-without-blocks",
        (*CKPT, "c.safetensors"),
        "no transformer blocks",
        _checkpoint("c.safetensors", lambda sd: {k: v for k, v in sd.items() if not k.startswith("transformer_")}),
    ),
    Case(
        "checkpoint-block-key-without-number",
        (*CKPT, "c.safetensors"),
        "transformer_blocks.x.foo",
        _checkpoint("c.safetensors", lambda sd: {**sd, "transformer_blocks.x.foo": torch.zeros(1)}),
    ),
    Case(
        "checkpoint-scalar-weight",
        (*CKPT, "c.safetensors"),
        "patch_embed.proj.weight is shape ()",
        _checkpoint("c.safetensors", lambda sd: {**sd, "patch_embed.proj.weight": torch.tensor(1.0)}),
    ),
    Case(
        "checkpoint-missing-ffn-at-released-size",
        (*CKPT, "c.safetensors"),
        "missing key transformer_blocks.0.ff.conv_point.weight",
        _released_size_checkpoint("c.safetensors"),
    ),
    Case(
        "checkpoint-1d-ffn-at-released-size",
        (*CKPT, "c.safetensors"),
        "transformer_blocks.0.ff.conv_point.weight is shape (3,)",
        _released_size_checkpoint("c.safetensors", **{"transformer_blocks.0.ff.conv_point.weight": torch.zeros(3)}),
    ),
    Case(
        "checkpoint-block-number-gap",
        (*CKPT, "c.safetensors"),
        "missing whole transformer blocks",
        _released_size_checkpoint("c.safetensors", **{"transformer_blocks.999999.x": torch.zeros(1)}),
    ),
    Case(
        "checkpoint-missing-block",
        (*CKPT, "c.pth", "--preset", "sana-tiny"),
        "transformer_blocks.1.attn1.to_q.weight",
        _checkpoint("c.pth", lambda sd: {k: v for k, v in sd.items() if not k.startswith("blocks.1.")}, nvlabs=True),
    ),
    Case(
        "checkpoint-unexpected-key",
        (*CKPT, "c.pth", "--preset", "sana-tiny"),
        "unexpected keys (1): blocks.0.extra_adapter.weight",
        _checkpoint("c.pth", lambda sd: {**sd, "blocks.0.extra_adapter.weight": torch.zeros(3)}, nvlabs=True),
    ),
    Case(
        "checkpoint-fused-qkv-that-does-not-split",
        (*CKPT, "c.pth", "--preset", "sana-tiny"),
        "blocks.0.attn.qkv.weight",
        _checkpoint("c.pth", lambda sd: {**sd, "blocks.0.attn.qkv.weight": torch.zeros(4)}, nvlabs=True),
    ),
    Case(
        "checkpoint-value-not-a-tensor",
        (*CKPT, "c.pth", "--preset", "sana-tiny"),
        "not tensors (1): proj_out.bias (int)",
        _checkpoint("c.pth", lambda sd: {**sd, "proj_out.bias": 3}),
    ),
    # --- export ---
    Case("export-unknown-component", ("export", "--components", "transformer,foo"), "Unknown component"),
    Case("export-unknown-precision", ("export", "--precision", "fp8"), "Invalid value for '--precision'"),
    Case(
        "export-controlnet-graph-without-folder", ("export", "--components", "controlnet"), "pass --controlnet FOLDER"
    ),
    Case("export-controlnet-not-a-folder", ("export", "--controlnet", "cn"), "not a diffusers Sana ControlNet folder"),
    Case(
        "export-controlnet-other-model-size",
        ("export", "--controlnet", "cn"),
        "is for another model size",
        _write("cn/config.json", _CN_96),
    ),
    Case(
        "export-out-is-a-file",
        ("export", "--components", "transformer", "--out", "f"),
        "Cannot write",
        _write("f", "x"),
    ),
    # --- build ---
    Case("build-unknown-profile", ("build", "--profiles", "1000"), "No profile 1000; valid profiles are 512"),
    Case("build-profile-not-a-number", ("build", "--profiles", "abc"), "'abc' is not a number"),
    Case("build-max-batch-zero", ("build", "--max-batch", "0"), "max-batch must be an integer from 1 to 32"),
    Case("build-unknown-backend", ("build", "--backend", "tensorrt-llm"), "'tensorrt-llm' is not one of"),
    Case("build-rtx-for-hopper", ("build", "--targets", "sm90", "--backend", "tensorrt-rtx"), "no Hopper"),
    Case("build-engine-dir-is-a-file", ("build", "--engine-dir", "f"), "not a folder", _write("f", "x")),
    Case(
        "build-aoti-fp8-without-fp8-gpu",
        ("build", "--backend", "aoti", "--quantize", "fp8", "--engine-dir", "e"),
        "FP8 GEMMs for this machine's GPU",
    ),
    Case(
        "build-backend-package-missing",
        ("build", "--backend", "aoti", "--engine-dir", "e"),
        "pip install 'sana-deploy[aoti]'",
        prelude="from sana_deploy.engines.backends import BACKENDS\n"
        "type(BACKENDS['aoti']).available = lambda self: False",
    ),
    Case(
        "build-into-read-only-filesystem",
        ("build", "--profiles", "512", "--backend", "onnxruntime", "--engine-dir", "ro"),
        ("read-only", "Read-only"),
        _folders("ro"),
        prelude=_readonly_fs("ro"),
    ),
    Case(
        "build-into-read-only-folder",
        ("build", "--profiles", "512", "--backend", "onnxruntime", "--engine-dir", "locked"),
        ("ermission denied", "not writable"),
        _folders("locked", mode=0o555),
        marks=(_NOT_ROOT,),
    ),
    # --- engines ---
    Case("engines-list-on-a-file", ("engines", "list", "--engine-dir", "f"), "not a folder", _write("f", "x")),
    Case("engines-verify-on-a-file", ("engines", "verify", "--engine-dir", "f"), "not a folder", _write("f", "x")),
    Case("engines-prune-on-a-file", ("engines", "prune", "--engine-dir", "f"), "not a folder", _write("f", "x")),
    Case(
        "engines-inspect-on-a-file", ("engines", "inspect", "k", "--engine-dir", "f"), "not a folder", _write("f", "x")
    ),
    Case("engines-inspect-unknown-key", ("engines", "inspect", "nosuch", "--engine-dir", "e"), "No cached engine key"),
    Case("engines-unknown-subcommand", ("engines", "rebuild"), "No such command"),
    Case(
        "engines-list-missing-folder", ("engines", "list", "--engine-dir", "none"), "No engines", exit=0, after=_only()
    ),
    Case("engines-verify-missing-folder", ("engines", "verify", "--engine-dir", "none"), "0 ok", exit=0, after=_only()),
    Case(
        "engines-prune-missing-folder", ("engines", "prune", "--engine-dir", "none"), "0 removed", exit=0, after=_only()
    ),
    Case(
        "engines-list-read-only-empty-folder",
        ("engines", "list", "--engine-dir", "ro"),
        "No engines",
        _folders("ro"),
        exit=0,
        prelude=_readonly_fs("ro"),
    ),
    Case(
        "engines-prune-read-only-empty-folder",
        ("engines", "prune", "--engine-dir", "ro"),
        "0 removed",
        _folders("ro"),
        exit=0,
        prelude=_readonly_fs("ro"),
    ),
    *[
        Case(
            f"engines-{command}-manifest-{kind}",
            ("engines", command, "--engine-dir", "e"),
            expected,
            _write("e/manifest.json", manifest),
            exit=0,
        )
        for kind, manifest in (
            ("not-an-object", "[1, 2]"),
            ("entries-a-list", json.dumps({"format": _MANIFEST_FORMAT, "entries": [1]})),
            ("entry-an-int", json.dumps({"format": _MANIFEST_FORMAT, "entries": {"abc": 5}})),
            (
                "entry-fields-wrong-types",
                json.dumps({"format": _MANIFEST_FORMAT, "entries": {"abc": {"model": 5, "component": [], "dir": 7}}}),
            ),
        )
        for command, expected in (("list", "No engines"), ("verify", "0 ok, 0 bad"), ("prune", "removed"))
    ],
    Case(
        "engines-prune-truncated-pending-record",
        ("engines", "prune", "--engine-dir", "e"),
        "removed",
        _write("e/.pending/0123456789abcdef.json", '{"pid": 12'),
        exit=0,
    ),
    Case(
        "engines-list-truncated-pending-record",
        ("engines", "list", "--engine-dir", "e"),
        "No engines",
        _write("e/.pending/0123456789abcdef.json", '{"pid": 12'),
        exit=0,
    ),
    # --- bench ---
    Case("bench-unknown-backend", ("bench", "--backends", "torch,warp-drive"), "Unknown backend 'warp-drive'"),
    Case("bench-unknown-stage", ("bench", "--stages", "step,teleport"), "Unknown stage"),
    Case("bench-runs-zero", ("bench", "--runs", "0"), "--runs must be at least 1"),
    Case("bench-warmup-negative", ("bench", "--warmup", "-1"), "cannot be negative"),
    Case("bench-unknown-profile", ("bench", "--profiles", "1000"), "No profile 1000"),
    Case("bench-profile-not-a-number", ("bench", "--profiles", "big"), "not a number"),
    Case("bench-profile-a-size", ("bench", "--profiles", "768x1344"), "not a number"),
    Case("bench-steps-zero", ("bench", "--steps", "0"), "--steps must be at least 1"),
    Case("bench-steps-too-many", ("bench", "--steps", "10000"), f"at most {MAX_STEPS}"),
    Case("bench-unknown-backend-option", ("bench", "--backends", "onnxruntime[turbo=1]"), "unknown option 'turbo=1'"),
    Case("bench-same-backend-twice", ("bench", "--backends", "torch,torch"), "same backend twice"),
    Case("bench-bad-backend-option-value", ("bench", "--backends", "torch[split=maybe]"), "split='maybe'"),
    Case("bench-guidance-nan", ("bench", "--guidance-scale", "nan"), "--guidance-scale must be a finite number"),
    Case("bench-text-encoder-layers-zero", ("bench", "--text-encoder-layers", "0"), "at least 1"),
    Case("bench-json-is-a-folder", (*BENCH, "--json", "d"), "is a folder", _folders("d")),
    Case("bench-markdown-under-a-file", (*BENCH, "--markdown", "f/r.md"), "is a file, not a folder", _write("f", "x")),
    Case("bench-work-dir-is-a-file", (*BENCH, "--work-dir", "f"), "--work-dir f is a file", _write("f", "x")),
    Case(
        "bench-plot-on-read-only-filesystem",
        (*BENCH, "--plot", "ro/p.png"),
        "read-only",
        _folders("ro"),
        prelude=_readonly_fs("ro"),
    ),
    Case("bench-strength-without-image", ("bench", "--strength", "0.5"), "pass --image too"),
    Case("bench-image-missing", ("bench", "--image", "nope.png"), "no such file"),
    Case(
        "bench-control-image-without-controlnet",
        ("bench", "--control-image", "e.png"),
        "no ControlNet: load one",
        _write("e.png", _png_bytes()),
    ),
    Case("bench-controlnet-without-control-image", ("bench", "--controlnet", "cn"), "pass --control-image too"),
    Case(
        "bench-controlnet-other-model-size",
        ("bench", "--controlnet", "cn", "--control-image", "e.png"),
        "is for another model size",
        _all(_write("e.png", _png_bytes()), _write("cn/config.json", _CN_96)),
    ),
    Case(
        "bench-pag-layers-out-of-range",
        ("bench", "--pag-scale", "2", "--pag-layers", "7"),
        "PAG layer 7 is out of range",
    ),
    Case("bench-sprint-pag", ("bench", "--model", "sana-sprint-tiny", "--pag-scale", "2"), "Sana-Sprint model"),
    # --- serve (start-up checks: it must refuse to start) ---
    Case("quantize-unknown-mode", ("quantize", "--mode", "int4"), "Invalid value for '--mode'"),
    Case(
        "quantize-empty-calib-set",
        ("quantize", "--mode", "int8", "--calib-prompts", "p.txt"),
        "--calib-prompts",
        _write("p.txt", "\n# only a comment\n"),
    ),
    Case(
        "quantize-binary-calib-set",
        ("quantize", "--mode", "int8", "--calib-prompts", "p.bin"),
        "not a text file",
        _write("p.bin", b"a\x00\xff"),
    ),
    Case(
        "quantize-calib-steps-zero",
        ("quantize", "--mode", "int8", "--calib-steps", "0"),
        "Invalid value for '--calib-steps'",
    ),
    Case(
        "quantize-calib-size-odd",
        ("quantize", "--mode", "int8", "--calib-size", "300"),
        "--calib-size must be a multiple of 32",
    ),
    Case(
        "quantize-fp8-7-bit-weights",
        ("quantize", "--mode", "fp8", "--weight-bits", "7"),
        "--weight-bits 7 is for int8 CPU graphs",
    ),
    Case("serve-max-n-zero", (*SERVE, "--max-n", "0"), "--max-n", timeout=SERVE_TIMEOUT_S),
    Case("serve-lora-dir-missing", (*SERVE, "--lora-dir", "nope"), "--lora-dir", timeout=SERVE_TIMEOUT_S),
    Case(
        "serve-lora-dir-empty", (*SERVE, "--lora-dir", "d"), "no .safetensors", _folders("d"), timeout=SERVE_TIMEOUT_S
    ),
    Case("serve-lora-cache-zero", (*SERVE, "--lora-cache", "0"), "--lora-cache", timeout=SERVE_TIMEOUT_S),
    Case(
        "serve-lora-bad-adapter",
        (*SERVE, "--lora-dir", "d"),
        "another model size",
        _write("d/big.safetensors", _lora_bytes(width=96)),
        timeout=SERVE_TIMEOUT_S,
    ),
    Case("serve-max-queue-zero", (*SERVE, "--max-queue", "0"), "--max-queue", timeout=SERVE_TIMEOUT_S),
    Case("serve-timeout-zero", (*SERVE, "--timeout", "0"), "--timeout", timeout=SERVE_TIMEOUT_S),
    Case("serve-timeout-negative", (*SERVE, "--timeout", "-5"), "--timeout", timeout=SERVE_TIMEOUT_S),
    Case("serve-timeout-nan", (*SERVE, "--timeout", "nan"), "--timeout", timeout=SERVE_TIMEOUT_S),
    Case("serve-steps-zero", (*SERVE, "--steps", "0"), "--steps", timeout=SERVE_TIMEOUT_S),
    Case("serve-steps-above-cap", (*SERVE, "--steps", "10000"), "--steps", timeout=SERVE_TIMEOUT_S),
    Case(
        "serve-engines-a-file",
        ("serve", "--port", "0", "--engines", "f"),
        "--engines f is a file",
        _write("f", "x"),
        timeout=SERVE_TIMEOUT_S,
    ),
    Case("serve-api-key-not-ascii", (*SERVE, "--api-key", "clé"), "--api-key", timeout=SERVE_TIMEOUT_S),
    Case("serve-port-too-large", ("serve", "--port", "99999"), "--port", timeout=SERVE_TIMEOUT_S),
    Case("serve-profiles-not-numbers", (*SERVE, "--profiles", "abc"), "--profiles", timeout=SERVE_TIMEOUT_S),
    Case("serve-bad-sizes", (*SERVE, "--sizes", "big"), "not WIDTHxHEIGHT", timeout=SERVE_TIMEOUT_S),
    Case(
        "serve-controlnet-not-a-folder",
        (*SERVE, "--controlnet", "cn"),
        "--controlnet cn: not a diffusers Sana ControlNet folder",
        timeout=SERVE_TIMEOUT_S,
    ),
    Case(
        "serve-controlnet-other-model-size",
        (*SERVE, "--controlnet", "cn"),
        "is for another model size",
        _write("cn/config.json", _CN_96),
        timeout=SERVE_TIMEOUT_S,
    ),
    Case(
        "serve-controlnet-no-weights",
        (*SERVE, "--controlnet", "cn"),
        "--controlnet cn has a config.json but no weights",
        _write("cn/config.json", _CN_64),
        timeout=SERVE_TIMEOUT_S,
    ),
    Case(
        "serve-controlnet-with-sprint",
        (*SERVE, "--model", "sana-sprint-tiny", "--controlnet", "cn"),
        "is a Sana-Sprint model",
        _write("cn/config.json", _CN_64),
        timeout=SERVE_TIMEOUT_S,
    ),
    # --- export-triton ---
    Case("export-triton-repo-is-a-file", ("export-triton", "f", "--engine-backend", "python"), "f", _write("f", "x")),
    Case("export-triton-unknown-profile", ("export-triton", "repo", "--profiles", "1000"), "1000"),
]

# Rows that fail today because the fix belongs to a part of the code another change owns: ``xfail(strict=True)``
# so each turns into a failure the moment it is fixed, and its mark is removed here.
XFAIL: dict[str, str] = {}


def _params() -> list:
    out = []
    for case in CASES:
        marks = list(case.marks)
        if case.id in XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[case.id]))
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


# ----- the runner -----

_SERVER = r"""
import io, json, os, signal, sys, time, traceback
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import sana_deploy.cli  # the expensive imports (torch, diffusers), once; no torch op runs before a fork
from sana_deploy.contract import aspect_buckets

aspect_buckets(1024)  # imports diffusers' bucket tables (seconds), as every generate does

reply = sys.stdout
sys.stdout = sys.stderr


def child(req):
    code = 1
    try:
        os.setpgrp()
        os.chdir(req["cwd"])
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
        os.environ.update(req["env"])
        exec(compile(req["prelude"], "<prelude>", "exec"), {"__name__": "__prelude__"})
        from sana_deploy.cli import main

        try:
            main(args=req["argv"], prog_name="sana-deploy")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if isinstance(exc.code, str):
                print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


reply.write("ready\n")
reply.flush()
for line in sys.stdin:
    req = json.loads(line)
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        child(req)
    deadline = time.monotonic() + req["timeout"]
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
        elif time.monotonic() > deadline:
            break
        else:
            time.sleep(0.01)
    try:
        os.killpg(pid, signal.SIGKILL)  # the case's process group: what it started too
    except (ProcessLookupError, PermissionError):
        pass
    if status is None:
        os.waitpid(pid, 0)
    rc = None if status is None else os.waitstatus_to_exitcode(status)
    reply.write(json.dumps({"rc": rc}) + "\n")
    reply.flush()
"""


class ForkServer:
    """One ``python`` that imported the CLI; :meth:`run` forks a fresh child of it per case."""

    def __init__(self, log: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "SANA_DEPLOY_DEBUG"}
        self.log = open(log, "wb")  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
        )
        if self._readline(300) != "ready":
            self.close()
            raise RuntimeError(f"the CLI fork server did not start; see {log}:\n{Path(log).read_text()[-3000:]}")

    def _readline(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        return self.proc.stdout.readline().strip() if ready else ""

    def run(
        self, argv: list[str], cwd: Path, env: dict[str, str], prelude: str, timeout: float
    ) -> tuple[int | None, str]:
        log = cwd.parent / f"{cwd.name}.out"
        request = {"argv": argv, "cwd": str(cwd), "log": str(log), "env": env, "prelude": prelude, "timeout": timeout}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = self._readline(timeout + 60)
        if not reply:
            raise RuntimeError("the CLI fork server stopped answering")
        return json.loads(reply)["rc"], log.read_text(errors="replace") if log.exists() else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def cli_server(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("cli-server") / "server.log")
    yield server
    server.close()


def run_case(case: Case, ws: Workspace, server: ForkServer | None) -> tuple[int | None, str]:
    env = dict(case.env)
    if case.fresh or server is None:
        assert not case.prelude, "a prelude needs the fork server"
        full_env = {k: v for k, v in os.environ.items() if k != "SANA_DEPLOY_DEBUG"} | env
        try:
            r = subprocess.run(
                [sys.executable, "-m", "sana_deploy", *case.argv],
                cwd=ws.tmp,
                env=full_env,
                capture_output=True,
                text=True,
                timeout=case.timeout,
            )
        except subprocess.TimeoutExpired as exc:
            return None, f"{exc.stdout or ''}{exc.stderr or ''}"
        return r.returncode, r.stdout + r.stderr
    return server.run(list(case.argv), ws.tmp, env, case.prelude, case.timeout)


@pytest.mark.parametrize("case", _params())
def test_bad_input_is_a_message(case: Case, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    ws = Workspace(tmp_path / "case", lambda: request.getfixturevalue("tiny").transformer.state_dict())
    ws.tmp.mkdir()
    if case.setup is not None:
        case.setup(ws)
    server = None if case.fresh else request.getfixturevalue("cli_server")
    try:
        rc, output = run_case(case, ws, server)
    finally:
        for path in ws.tmp.rglob("*"):  # let pytest clean up the locked folders
            if path.is_dir():
                path.chmod(0o755)
    shown = f"$ sana-deploy {' '.join(case.argv)}\n[exit {rc}]\n{output[-4000:]}"
    assert rc is not None, f"still running after {case.timeout:.0f}s (it did not refuse the input)\n{shown}"
    assert "Traceback" not in output, shown
    if case.exit is None:
        assert rc != 0, shown
        assert re.search(r"^(error|Error|Usage):", output, re.MULTILINE), shown
    else:
        assert rc == case.exit, shown
    expected = (case.message,) if isinstance(case.message, str) else case.message
    assert any(m in output for m in expected), shown
    assert case.after is None or case.after(ws), f"{shown}\nleft behind: {sorted(map(str, ws.tmp.rglob('*')))}"


def test_case_ids_are_unique() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    assert set(XFAIL) <= set(ids), set(XFAIL) - set(ids)


def test_every_command_has_rows() -> None:
    """A command (or ``engines`` subcommand) without a row here fails: add its bad inputs to the table."""
    import click

    from sana_deploy.cli import main

    names = []
    for name, command in main.commands.items():
        if isinstance(command, click.Group):
            names += [(name, sub) for sub in command.commands]
        else:
            names.append((name,))
    covered = {tuple(c.argv[: len(n)]) for c in CASES for n in names}
    missing = [" ".join(n) for n in names if n not in covered]
    assert not missing, f"no bad-input rows for: {', '.join(missing)}"


# ----- the safety net itself: unexpected exceptions, --debug, SANA_DEPLOY_DEBUG -----

_BREAK_MODELS = "import sana_deploy.cli.export as e\ne.PRESETS = None"  # `models` then raises AttributeError
_BREAK_MODELS_MULTILINE = """
import sana_deploy.cli.export as e
class Broken:
    def values(self):
        raise RuntimeError("first line\\nsecond line")
e.PRESETS = Broken()
"""


@pytest.mark.parametrize(
    ("argv", "env", "prelude", "message"),
    [
        (["models"], {}, _BREAK_MODELS, "error: unexpected AttributeError"),
        (["models"], {}, _BREAK_MODELS_MULTILINE, "error: unexpected RuntimeError: first line. "),
        (
            ["export-triton", "f", "--engine-backend", "python"],
            {},
            "import sana_deploy.serve.triton.repository as r\n"
            "def boom(*a, **k):\n    raise PermissionError(13, 'Permission denied', '/srv/models')\n"
            "r.export_triton_repository = boom",
            "error: Permission denied: /srv/models",
        ),
    ],
    ids=["attribute-error", "multi-line-runtime-error", "permission-error"],
)
def test_unexpected_errors_are_one_line(argv, env, prelude, message, tmp_path, cli_server) -> None:
    rc, output = cli_server.run(argv, tmp_path, env, prelude, 120)
    assert rc not in (0, None) and message in output and "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and output.strip().splitlines()[-1] == errors[0], output
    assert "--debug" in errors[0] or "Permission denied" in errors[0]


@pytest.mark.parametrize("how", ["--debug", "SANA_DEPLOY_DEBUG=1"])
def test_debug_shows_the_traceback(how, tmp_path, cli_server) -> None:
    argv = ["--debug", "models"] if how == "--debug" else ["models"]
    env = {"SANA_DEPLOY_DEBUG": "1"} if how != "--debug" else {}
    rc, output = cli_server.run(argv, tmp_path, env, _BREAK_MODELS, 120)
    assert rc == 1 and "Traceback (most recent call last)" in output and "AttributeError" in output, output
    assert output.strip().splitlines()[-1].startswith("error: unexpected AttributeError"), output
    rc, output = cli_server.run([*argv[:-1], "generate", "x", "--steps", "0"], tmp_path, env, "", 120)
    assert rc == 2 and "Traceback" in output and "error: --steps must be" in output, output


def test_debug_off_values(tmp_path, cli_server) -> None:
    rc, output = cli_server.run(["models"], tmp_path, {"SANA_DEPLOY_DEBUG": "0"}, _BREAK_MODELS, 120)
    assert rc == 1 and "Traceback" not in output and "error: unexpected AttributeError" in output, output
