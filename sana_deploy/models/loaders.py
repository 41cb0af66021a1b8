"""Load Sana from a preset name, a diffusers folder, an NVlabs ``.pth`` or a ``.safetensors`` file.

Weights are read with ``torch.load(..., weights_only=True)`` or safetensors only. A checkpoint whose keys
do not match the assumed config fails with the list of missing/unexpected keys and the config it assumed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from sana_deploy.contract import COMPONENTS
from sana_deploy.errors import CheckpointError, fail
from sana_deploy.models.components import SanaComponents
from sana_deploy.models.config import (
    DEFAULT_MODEL,
    PRESETS,
    TINY_PRESETS,
    SanaPreset,
    TransformerConfig,
    get_preset,
    preset_for,
)
from sana_deploy.models.convert import DROPPED_PREFIXES, is_nvlabs, nvlabs_to_diffusers, unwrap
from sana_deploy.models.transformer import SanaTransformer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)
_SHOWN_KEYS = 12
_CROSS_HEADS = {1152: (16, 72), 2240: (20, 112)}  # not in the weights (docs/SANA.md#checkpoint-key-mapping)


def load_components(
    model: str | Path = DEFAULT_MODEL,
    components: tuple[str, ...] = COMPONENTS,
    dtype: torch.dtype = torch.float32,
    preset: str | None = None,
    random_weights: bool = False,
    seed: int = 0,
) -> SanaComponents:
    """Load ``components`` of ``model``.

    model: a preset name (``sana-tiny``: seeded random weights, always available; a released preset needs
        ``random_weights=True``, since sana-deploy never downloads), a diffusers folder, or a transformer
        checkpoint file (``.pth``/``.pt``/``.safetensors``, NVlabs or diffusers keys).
    preset: for single-file checkpoints, the released variant it is (sets PE mode, flow_shift and the
        VAE/text-encoder configs); inferred from the weights' dimensions when None.
    """
    from sana_deploy.models.random import random_components

    key = str(model)
    if key.lower() in PRESETS and not Path(key).exists():
        p = get_preset(key)
        if p.name in TINY_PRESETS or random_weights:
            return random_components(p, components, dtype, seed)
        fail(
            f"Preset {p.name!r} has no weights on this machine and sana-deploy never downloads at run time. "
            f"Download {p.hub_id} (e.g. `huggingface-cli download {p.hub_id} --local-dir DIR`) and pass "
            f"--model DIR, or use random weights for benchmarking (random_weights=True / --random-weights).",
            CheckpointError,
        )
    path = Path(model)
    if not path.exists():
        valid = ", ".join(sorted(PRESETS))
        fail(f"{key!r} is neither a preset ({valid}) nor an existing path.", CheckpointError)
    if path.is_dir():
        return load_diffusers_folder(path, components, dtype)
    return load_transformer_file(path, dtype, preset)


def _reason(exc: Exception) -> str:
    """The line of a reader's error that says what is wrong (torch's weights-only refusal is a page of advice,
    including to turn the check off, with the reason on its ``WeightsUnpickler error:`` line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]

    def sentence(text: str) -> str:
        first = text.split(". ")[0].rstrip(".")
        return first if len(first) <= 300 else first[:297] + "..."

    for i, line in enumerate(lines):
        if line.startswith("WeightsUnpickler error:"):
            rest = line.removeprefix("WeightsUnpickler error:").strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return f"not a weights-only file ({sentence(rest)})" if rest else "not a weights-only file"
    return sentence(lines[0]) if lines else ""


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, pickled code, not a checkpoint at all
        fail(
            f"Could not read checkpoint {path}: {type(exc).__name__}: {_reason(exc)}. Check that the file is a "
            f"complete download of a .pth/.safetensors checkpoint (pickled code is refused: weights_only=True).",
            CheckpointError,
        )
    if not isinstance(obj, dict):
        fail(f"{path} does not contain a state dict (found {type(obj).__name__}).", CheckpointError)
    return unwrap(obj)


def _weight_shape(sd: dict[str, torch.Tensor], key: str, ndim: int, path: Path) -> tuple[int, ...]:
    """The shape of ``sd[key]``, which must be a tensor of at least ``ndim`` dimensions (else a CheckpointError
    naming the key)."""
    if key not in sd:
        fail(
            f"{path} is not a complete Sana transformer checkpoint: missing key {key}. Check that the file is a "
            f"complete download, or pass --preset NAME to say which variant it is.",
            CheckpointError,
        )
    value = sd[key]
    if not isinstance(value, torch.Tensor) or value.dim() < ndim or 0 in value.shape[:ndim]:
        found = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        fail(
            f"{path}: key {key} is {found}, not a {ndim}-D weight, so it is not a Sana transformer checkpoint "
            f"sana-deploy can read. Check the file, or pass --preset NAME to say which variant it is.",
            CheckpointError,
        )
    return tuple(value.shape)


def _block_count(sd: dict[str, torch.Tensor], path: Path) -> int:
    """``1 + the largest N`` of the ``transformer_blocks.N.*`` keys; keys with another form are named in the
    error."""
    indices, odd = set(), []
    for key in sd:
        if key.startswith("transformer_blocks."):
            part = key.split(".")[1]
            if part.isdigit() and part.isascii():
                indices.add(int(part))
            else:
                odd.append(key)
    if odd:
        fail(
            f"{path} has transformer block keys without a block number: {', '.join(sorted(odd)[:_SHOWN_KEYS])}. "
            f"Sana block keys are transformer_blocks.N.* (or blocks.N.* in NVlabs checkpoints); check the file.",
            CheckpointError,
        )
    if not indices:
        fail(
            f"{path} has no transformer blocks (no transformer_blocks.N.* or blocks.N.* keys), so it is not a "
            f"complete Sana transformer checkpoint. Check that the file is a complete download.",
            CheckpointError,
        )
    gaps = sorted(set(range(max(indices))) - indices)
    if gaps:  # checked before a model of that depth is built: a stray block number cannot allocate blocks
        shown = ", ".join(f"transformer_blocks.{i}.*" for i in gaps[:_SHOWN_KEYS])
        more = f" ... (+{len(gaps) - _SHOWN_KEYS} more)" if len(gaps) > _SHOWN_KEYS else ""
        fail(
            f"{path} is missing whole transformer blocks (missing keys: {shown}{more}; the highest block is "
            f"{max(indices)}). Check that the file is a complete download.",
            CheckpointError,
        )
    return 1 + max(indices)


def _config_from_weights(sd: dict[str, torch.Tensor], path: Path, preset: str | None) -> tuple[SanaPreset, str]:
    """The preset a diffusers-layout transformer state dict is assumed to be, and a sentence saying why.

    Every key it reads is checked first (present, a tensor of the right rank), so a damaged checkpoint is a
    :class:`CheckpointError` naming the key, never a ``KeyError``/``IndexError``/``ValueError``.
    """
    if "patch_embed.proj.weight" not in sd or "caption_projection.linear_1.weight" not in sd:
        sample = ", ".join(sorted(sd)[:5]) or "none"
        fail(
            f"{path} is not a Sana transformer checkpoint: no patch_embed/x_embedder or caption projection "
            f"weights (first keys: {sample}). Pass a Sana .pth/.safetensors or a diffusers folder.",
            CheckpointError,
        )
    if preset is not None:  # the strict load lists whatever does not match the given variant
        p = get_preset(preset)
        return p, f"preset {p.name} (given)"
    hidden = _weight_shape(sd, "patch_embed.proj.weight", 1, path)[0]
    depth = _block_count(sd, path)
    if hidden not in _CROSS_HEADS:
        fail(
            f"{path}: hidden size {hidden} is not a released Sana size; pass --preset to say which config it is.",
            CheckpointError,
        )
    heads, head_dim = _CROSS_HEADS[hidden]
    t = TransformerConfig(
        num_layers=depth,
        hidden_size=hidden,
        num_cross_attention_heads=heads,
        cross_attention_head_dim=head_dim,
        caption_channels=_weight_shape(sd, "caption_projection.linear_1.weight", 2, path)[1],
        mlp_ratio=_weight_shape(sd, "transformer_blocks.0.ff.conv_point.weight", 2, path)[1] / hidden,
        qk_norm="transformer_blocks.0.attn1.norm_q.weight" in sd,
        guidance_embeds="time_embed.guidance_embedder.linear_1.weight" in sd,  # Sana-Sprint
    )
    p = preset_for(t)
    if p is None:
        p = SanaPreset(f"{path.stem}", t)
        return p, f"config inferred from the weights ({depth} blocks, hidden {hidden}; 1024px tier, no PE)"
    return p, f"preset {p.name} (inferred from the weights; pass --preset for 2K/4K checkpoints)"


def load_transformer_file(path: Path, dtype: torch.dtype = torch.float32, preset: str | None = None) -> SanaComponents:
    """A single transformer checkpoint, NVlabs or diffusers keys, ``.pth``/``.pt``/``.bin``/``.safetensors``."""
    if preset is not None:
        get_preset(preset)  # an unknown --preset fails before the file is read
    sd = _read_state_dict(path)
    layout = "diffusers"
    if is_nvlabs(sd):
        sd, unmapped = nvlabs_to_diffusers(sd)
        layout = "NVlabs"
        if unmapped:
            sd.update({k: torch.empty(0) for k in unmapped})  # reported as unexpected below
    p, why = _config_from_weights(sd, path, preset)
    model = _strict_load(_new_transformer(p.transformer, path), sd, path, why)
    return SanaComponents(
        preset=p, model_id=str(path), transformer=model.to(dtype).eval(), source=f"{layout} checkpoint, {why}"
    )


def _strict_load(model: SanaTransformer, sd: dict[str, torch.Tensor], path: Path, why: str) -> SanaTransformer:
    sd = {k: v for k, v in sd.items() if not k.startswith(DROPPED_PREFIXES) and k != "patch_embed.pos_embed"}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    not_tensors = sorted(k for k in set(sd) & set(expected) if not isinstance(sd[k], torch.Tensor))
    mismatched = sorted(k for k in set(sd) & set(expected) - set(not_tensors) if sd[k].shape != expected[k].shape)
    if missing or unexpected or mismatched or not_tensors:

        def show(keys: list[str]) -> str:
            more = f" ... (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
            return ", ".join(keys[:_SHOWN_KEYS]) + more

        lines = [f"Checkpoint {path} does not match the assumed config: {why}."]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {show(unexpected)}")
        if mismatched:
            shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}" for k in mismatched]
            lines.append(f"  shape mismatches ({len(mismatched)}): {show(shapes)}")
        if not_tensors:
            kinds = [f"{k} ({type(sd[k]).__name__})" for k in not_tensors]
            lines.append(f"  values that are not tensors ({len(not_tensors)}): {show(kinds)}")
        lines.append("Pass --preset NAME if the variant was guessed wrong, or check the checkpoint is complete.")
        fail("\n".join(lines), CheckpointError)
    model.load_state_dict(sd, strict=True)
    return model


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        fail(f"Could not read {path}: {exc}", CheckpointError)
    if not isinstance(data, dict):
        fail(f"{path} is not a JSON object (found {type(data).__name__}); check the file.", CheckpointError)
    return data


def _transformer_config(path: Path) -> TransformerConfig:
    """The transformer config of a diffusers folder; a value of the wrong type is a CheckpointError naming the
    file."""
    try:
        return TransformerConfig.from_diffusers(_read_json(path))
    except (TypeError, ValueError, ArithmeticError) as exc:
        fail(
            f"{path} has a value sana-deploy cannot use ({type(exc).__name__}: {exc}); check the file.", CheckpointError
        )


def _new_transformer(config: TransformerConfig, source: Path) -> SanaTransformer:
    """An empty transformer of ``config``; a config no transformer can be built from names ``source``."""
    try:
        return SanaTransformer(config)
    except (TypeError, ValueError, ArithmeticError, RuntimeError) as exc:
        fail(
            f"Cannot build a Sana transformer from the config of {source} ({type(exc).__name__}: {exc}); check "
            f"that {source} is a Sana transformer and its config values are numbers of the right kind.",
            CheckpointError,
        )


def _folder_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All weight files of a diffusers component folder (single file, shards, or variants)."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        fail(f"No weights (*.safetensors or *.bin) in {folder}.", CheckpointError)
    variants = [f for f in files if f.name.count(".") == 1] or files  # prefer the plain (non-variant) files
    sd: dict[str, torch.Tensor] = {}
    for f in variants:
        sd.update(_read_state_dict(f))
    return sd


def load_diffusers_folder(
    folder: Path, components: tuple[str, ...] = COMPONENTS, dtype: torch.dtype = torch.float32
) -> SanaComponents:
    """A diffusers Sana folder (``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``)."""
    if not (folder / "transformer").is_dir() and not (folder / "model_index.json").exists():
        fail(
            f"{folder} is not a diffusers Sana folder (no transformer/ or model_index.json). Pass the folder "
            f"that holds transformer/, vae/, text_encoder/ and tokenizer/.",
            CheckpointError,
        )
    tcfg = _transformer_config(folder / "transformer" / "config.json")
    known = preset_for(tcfg)
    flow_shift = known.flow_shift if known else 3.0
    sigma_data = known.sigma_data if known else 0.5
    sched = folder / "scheduler" / "scheduler_config.json"
    if sched.exists():
        sched_cfg = _read_json(sched)
        flow_shift = float(sched_cfg.get("flow_shift", flow_shift))
        sigma_data = float(sched_cfg.get("sigma_data", sigma_data))  # Sana-Sprint's SCMScheduler
    vae_cfg_path = folder / "vae" / "config.json"
    te_cfg_path = folder / "text_encoder" / "config.json"
    preset = SanaPreset(
        name=folder.name,
        transformer=tcfg,
        vae=_read_json(vae_cfg_path) if vae_cfg_path.exists() else (known.vae if known else {}),
        text_encoder=_read_json(te_cfg_path) if te_cfg_path.exists() else (known.text_encoder if known else {}),
        flow_shift=flow_shift,
        dtype=known.dtype if known else "fp32",
        hub_id=known.hub_id if known else None,
        sigma_data=sigma_data,
    )
    why = f"config from {folder / 'transformer' / 'config.json'}" + (f" (= preset {known.name})" if known else "")
    out = SanaComponents(preset=preset, model_id=str(folder), source=f"diffusers folder, {why}")
    if "transformer" in components:
        sd = _folder_state_dict(folder / "transformer")
        model = _new_transformer(tcfg, folder / "transformer")
        out.transformer = _strict_load(model, sd, folder / "transformer", why).to(dtype).eval()
    if "vae" in components:
        from diffusers import AutoencoderDC

        out.vae = _from_pretrained(AutoencoderDC, folder / "vae", dtype)
    if "text_encoder" in components:
        from transformers import AutoModel

        te = _from_pretrained(AutoModel, folder / "text_encoder", dtype, attn_implementation="eager")
        out.text_encoder = te.get_decoder() if hasattr(te, "get_decoder") and te.get_decoder() is not te else te
        out.tokenizer = load_tokenizer(folder)
    return out


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    """The tokenizer of a diffusers folder (``folder/tokenizer``, or ``folder`` itself when it holds the tokenizer
    files), read with ``AutoTokenizer`` as diffusers reads it, padding on the right as Sana's prompt handling needs."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    path = folder / "tokenizer" if (folder / "tokenizer").is_dir() else folder
    if not (path / "tokenizer_config.json").exists() and not (path / "tokenizer.json").exists():
        fail(f"No tokenizer in {folder} (expected {folder / 'tokenizer'}/tokenizer_config.json).", CheckpointError)
    tokenizer = _from_pretrained(AutoTokenizer, path, None)
    tokenizer.padding_side = "right"
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path) -> str:
    """Write ``tokenizer`` with ``save_pretrained`` and return the class name for ``model_index.json``.

    A plain ``PreTrainedTokenizerFast`` (the sana-tiny byte tokenizer) is recorded under that public name in
    ``tokenizer_config.json`` too, so diffusers and ``AutoTokenizer`` rebuild exactly the saved ``tokenizer.json``
    instead of a Gemma tokenizer with other ids.
    """
    from transformers import PreTrainedTokenizerFast

    from sana_deploy.models.tokenizer import TOKENIZER_CLASS  # imports transformers, as load_components does

    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    if type(tokenizer) is not PreTrainedTokenizerFast:
        return type(tokenizer).__name__
    cfg_path = folder / "tokenizer_config.json"
    cfg = _read_json(cfg_path)
    cfg["tokenizer_class"] = TOKENIZER_CLASS
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return TOKENIZER_CLASS


def _from_pretrained(cls, path: Path, dtype: torch.dtype | None, **kwargs):
    if not path.is_dir():
        fail(f"Missing folder {path}; the diffusers folder is incomplete.", CheckpointError)
    try:
        if dtype is None:
            return cls.from_pretrained(str(path), **kwargs)
        return cls.from_pretrained(str(path), torch_dtype=dtype, **kwargs).eval()
    except Exception as exc:
        fail(f"Could not load {path}: {type(exc).__name__}: {exc}", CheckpointError)


def save_diffusers_folder(components: SanaComponents, folder: Path) -> Path:
    """Write ``components`` as a diffusers folder that diffusers' ``SanaPipeline.from_pretrained`` can load."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    p = components.preset
    index = {"_class_name": "SanaSprintPipeline" if p.sprint else "SanaPipeline", "_diffusers_version": "0.32.0"}
    if components.transformer is not None:
        (folder / "transformer").mkdir(exist_ok=True)
        cfg = {"_class_name": "SanaTransformer2DModel", **p.transformer.to_diffusers()}
        (folder / "transformer" / "config.json").write_text(json.dumps(cfg, indent=2))
        sd = {k: v.contiguous() for k, v in components.transformer.state_dict().items()}
        save_file(sd, str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
        index["transformer"] = ["diffusers", "SanaTransformer2DModel"]
    if components.vae is not None:
        components.vae.save_pretrained(str(folder / "vae"))
        index["vae"] = ["diffusers", "AutoencoderDC"]
    if components.text_encoder is not None:
        components.text_encoder.save_pretrained(str(folder / "text_encoder"))
        index["text_encoder"] = ["transformers", "Gemma2Model"]
        index["tokenizer"] = ["transformers", save_tokenizer(components.tokenizer, folder / "tokenizer")]
    (folder / "scheduler").mkdir(exist_ok=True)
    if p.sprint:  # Sana-Sprint's sCM scheduler (TrigFlow), as diffusers' conversion writes it
        sched = {"_class_name": "SCMScheduler", "num_train_timesteps": 1000, "prediction_type": "trigflow"}
        sched["sigma_data"] = p.sigma_data
        (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
        index["scheduler"] = ["diffusers", "SCMScheduler"]
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
        return folder
    sched = {
        "_class_name": "DPMSolverMultistepScheduler",
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "solver_type": "midpoint",
        "lower_order_final": True,
        "final_sigmas_type": "zero",
        "use_flow_sigmas": True,
        "flow_shift": p.flow_shift,
        "prediction_type": "flow_prediction",
        "num_train_timesteps": 1000,
    }
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(sched, indent=2))
    index["scheduler"] = ["diffusers", "DPMSolverMultistepScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
