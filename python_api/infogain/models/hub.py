"""Build, save and load models in the official checkpoint formats.

Loading reads config.json and safetensors only: no code from the checkpoint is
executed and nothing is unpickled (``.bin``/``.pt`` checkpoints are refused).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from typing import Optional, Tuple

import torch

from . import dream, fast_dllm_v2, llada, llada2, sdar, sdar_moe
from .base import ModelConfig
from .transformer import Transformer
from . import _config as C

ARCHITECTURES = (llada, dream, sdar, llada2, sdar_moe, fast_dllm_v2)
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def toy_model_path() -> str:
    """Folder of the toy checkpoint shipped in the package (config.json, model.safetensors,
    tokenizer.json, ...): the demo's model, also what tests and the bench load by default."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "toy")


def preset_config(name: str) -> dict:
    """Official config.json (as a dict) of a full-size architecture: "llada-8b", "dream-7b", "sdar-8b",
    "llada2-mini", "sdar-moe-30b-a3b", "fast-dllm-v2-7b".

    Use with :func:`build` for random-weight benchmarks.
    """
    for arch in ARCHITECTURES:
        if name in arch.PRESETS:
            return copy.deepcopy(arch.PRESETS[name])
    names = [n for arch in ARCHITECTURES for n in arch.PRESETS]
    raise ValueError(f"name must be one of {names}, got {name!r}")


def architecture_of(config: dict):
    """The architecture module (llada / dream / sdar / llada2 / sdar_moe / fast_dllm_v2) that ``config`` describes."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    found = [arch for arch in ARCHITECTURES if arch.matches(config)]
    if len(found) != 1:
        raise ValueError(f"config.json does not name a supported architecture (model_type="
                         f"{config.get('model_type')!r}, architectures={config.get('architectures')!r}); "
                         "supported: LLaDA/MMaDA, Dream, SDAR/TraDo, LLaDA2.x (llada2_moe), SDAR-MoE (sdar_moe), "
                         "Fast-dLLM v2 (Fast_dLLM_QwenForCausalLM)")
    return found[0]


def _model_config(arch, spec, config: dict, mask_token_id: int) -> ModelConfig:
    eos = C.optional_int(config, "eos_token_id")
    if eos is None and getattr(arch, "DEFAULT_EOS_ID", spec.vocab_size) < spec.vocab_size:
        eos = arch.DEFAULT_EOS_ID   # LLaDA2's config.json names only the pad id; EOS is the same token
    return ModelConfig(
        arch=arch.NAME, vocab_size=spec.vocab_size, mask_token_id=mask_token_id,
        eos_token_id=eos, pad_token_id=C.optional_int(config, "pad_token_id"),
        num_layers=spec.num_layers, num_kv_heads=spec.num_kv_heads, head_dim=spec.head_dim,
        max_position_embeddings=arch.max_positions(config), block_causal=spec.block_causal,
        block_anchor=spec.block_anchor, block_length=getattr(arch, "block_length", lambda c: None)(config),
        extra=copy.deepcopy(config),
    )


def _check_mask_id(mask_token_id, vocab_size: int) -> int:
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or not 0 <= mask_token_id < vocab_size:
        raise ValueError(f"mask_token_id must be an int in [0, {vocab_size}), got {mask_token_id!r}")
    return mask_token_id


# The model dtypes a command line or config may name.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: Optional[str], device) -> Optional[torch.dtype]:
    """The model dtype that ``name`` (from a command line or config) asks for on ``device``.

    One of :data:`DTYPES`; None or ``"auto"``: bfloat16 on CUDA, float32 elsewhere (bfloat16 matrix
    products on CPU are slow and lose precision); ``"checkpoint"``: None, which :func:`load` reads
    as the checkpoint's own dtype. ValueError for any other name."""
    if name is None or name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if name == "checkpoint":
        return None
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto, checkpoint or one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _check_dtype_device(dtype, device):
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    try:
        device = torch.device(device) if device is not None else torch.device("cpu")
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device is not a valid torch device: {device!r}") from exc
    backend = getattr(torch, device.type, None) if device.type not in ("cpu", "meta") else None
    if backend is not None and hasattr(backend, "is_available") and not backend.is_available():
        raise ValueError(f"device {str(device)!r} is not available: this torch ({torch.__version__}) has no "
                         f"usable {device.type} device; use device='cpu'")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return device


def build(config: dict, *, dtype: Optional[torch.dtype] = None, device=None) -> Transformer:
    """A randomly initialised model from an official-format config dict.

    Parameters are created directly on ``device`` in ``dtype`` (default float32,
    CPU), so full-size random models are quick to make on a GPU. The mask id is
    the config's ``mask_token_id``, else the architecture's official one.
    Use ``torch.manual_seed`` for reproducible weights.
    """
    arch = architecture_of(config)
    spec = arch.spec(config)
    device = _check_dtype_device(dtype, device)
    if config.get("mask_token_id") is not None:
        mask_id = _check_mask_id(config["mask_token_id"], spec.vocab_size)
    else:  # tiny test vocabularies do not reach the official id
        mask_id = arch.DEFAULT_MASK_ID if arch.DEFAULT_MASK_ID < spec.vocab_size else spec.vocab_size - 1
    model = Transformer(spec, _model_config(arch, spec, config, mask_id), device=device, dtype=dtype or torch.float32)
    return model.eval()


def save(model: Transformer, path: str, tokenizer=None) -> str:
    """Write ``config.json`` + ``model.safetensors`` (official key names) to directory ``path``.

    The saved config is the model's config with ``mask_token_id`` filled in, so
    :func:`load` finds the same mask id. ``tokenizer.save_pretrained`` is called
    when a tokenizer is given. Returns ``path``.
    """
    from safetensors.torch import save_file

    if not isinstance(model, Transformer):
        raise TypeError(f"model must be an infogain Transformer model, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    arch = architecture_of(model.config.extra)
    os.makedirs(path, exist_ok=True)
    internal = model.state_dict()
    tensors = {official: _internal_tensor(internal, name).detach().cpu().contiguous()
               for official, name in arch.key_map(model.spec).items()}
    config = copy.deepcopy(model.config.extra)
    config["mask_token_id"] = model.config.mask_token_id
    config.setdefault("torch_dtype", str(model.embed.weight.dtype).replace("torch.", ""))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return str(path)


def _internal_tensor(state: dict, name):
    """The internal tensor an official key maps to: ``state[name]``, or for ``(name, index)`` one
    expert's slice ``state[name][index]`` of a stacked expert weight."""
    if isinstance(name, tuple):
        return state[name[0]][name[1]]
    return state[name]


def _read_config(path: str) -> dict:
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"path {path!r} has no config.json")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"config.json in {path!r} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"config.json in {path!r} must hold a JSON object")
    return config


def max_positions(path: str) -> int:
    """The number of positions (prompt + generation) of the diffusion checkpoint in folder ``path``,
    read from its config.json alone (the weights are not opened): what a front end checks its
    lengths against before it loads the model or writes anything."""
    config = _read_config(path)
    return architecture_of(config).max_positions(config)


def _weight_files(path: str) -> dict:
    """Official key -> safetensors file holding it."""
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"model.safetensors.index.json in {path!r} has no valid 'weight_map'") from exc
        files = {}
        for key, name in weight_map.items():
            if not isinstance(name, str) or os.path.basename(name) != name or not name.endswith(".safetensors"):
                raise ValueError(f"shard index maps {key!r} to an invalid file name {name!r}")
            shard = os.path.join(path, name)
            if not os.path.isfile(shard):
                raise ValueError(f"shard {name!r} named in the index (tensor {key!r}) is missing")
            files[key] = shard
        return files
    if os.path.isfile(single):
        with _open_safetensors(single) as f:
            return {key: single for key in f.keys()}
    pickled = [n for n in _PICKLE_WEIGHTS if os.path.exists(os.path.join(path, n))]
    if pickled:
        raise ValueError(f"path {path!r} holds only pickle weights ({', '.join(pickled)}); they are refused "
                         "because unpickling can run code. Convert the checkpoint to safetensors.")
    raise ValueError(f"path {path!r} has neither model.safetensors nor model.safetensors.index.json")


@contextlib.contextmanager
def _open_safetensors(file: str):
    """``safe_open(file)`` whose failures (a truncated, empty or garbage file) are one ValueError naming
    the file: safetensors' own error names neither the file nor what to do about it."""
    from safetensors import SafetensorError, safe_open

    try:
        handle = safe_open(file, framework="pt", device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{file} is not a readable safetensors file ({exc}); it may be truncated or "
                         f"corrupt: download or save it again") from None
    with handle as f:
        try:
            yield f
        except SafetensorError as exc:
            raise ValueError(f"{file}: reading a tensor failed ({exc}); the file may be truncated or "
                             f"corrupt: download or save it again") from None


def _load_tokenizer(path: str):
    if not any(os.path.isfile(os.path.join(path, n)) for n in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer, PretrainedConfig, PreTrainedTokenizerFast

    try:
        # An empty model config: otherwise transformers reads config.json as one of its own model
        # configs, which these architectures are not, and warns about it (model type mismatch,
        # Dream's rope_scaling) in the user's output. The tokenizer class comes from
        # tokenizer_config.json.
        return AutoTokenizer.from_pretrained(path, config=PretrainedConfig(), trust_remote_code=False,
                                             local_files_only=True)
    except Exception:
        # Checkpoints whose tokenizer_config names a remote-code class (Dream):
        # the fast tokenizer file is all that is needed.
        tokenizer_json = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tokenizer_json):
            raise
        return PreTrainedTokenizerFast(tokenizer_file=tokenizer_json)


def find_mask_token_id(arch, config: dict, tokenizer, vocab_size: int) -> int:
    """config ``mask_token_id``; else the tokenizer's mask token; else the
    architecture's mask token string in the vocabulary; else the official id."""
    if config.get("mask_token_id") is not None:
        return _check_mask_id(config["mask_token_id"], vocab_size)
    if tokenizer is not None:
        if getattr(tokenizer, "mask_token_id", None) is not None:
            return _check_mask_id(tokenizer.mask_token_id, vocab_size)
        vocab = tokenizer.get_vocab()
        for token in arch.MASK_TOKENS:
            if token in vocab:
                return _check_mask_id(vocab[token], vocab_size)
    return _check_mask_id(arch.DEFAULT_MASK_ID, vocab_size)


def load(path, *, dtype: Optional[torch.dtype] = None, device=None) -> Tuple[Transformer, object]:
    """Load ``(model, tokenizer)`` from a local checkpoint directory in the official format.

    ``path`` holds config.json, model.safetensors (or a sharded
    model.safetensors.index.json) and optionally tokenizer files (loaded without
    remote code; ``tokenizer`` is None when there are none). ``dtype`` defaults
    to the stored dtype, ``device`` to CPU. Raises ValueError naming the
    offending tensor when one is missing, unexpected or mis-shaped.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"path {path!r} is not a directory")
    device = _check_dtype_device(dtype, device)
    config = _read_config(path)
    arch = architecture_of(config)
    spec = arch.spec(config)
    files = _weight_files(path)
    key_map = arch.key_map(spec)
    missing = sorted(set(key_map) - set(files))
    extra = sorted(set(files) - set(key_map))
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    if extra:
        raise ValueError(f"checkpoint has {len(extra)} unexpected tensor(s), e.g. {extra[:3]}")

    tokenizer = _load_tokenizer(path)
    mask_id = find_mask_token_id(arch, config, tokenizer, spec.vocab_size)
    with torch.device("meta"):
        model = Transformer(spec, _model_config(arch, spec, config, mask_id))
    expected = model.state_dict()
    state = {}
    for shard in sorted(set(files.values())):
        with _open_safetensors(shard) as f:
            for key in f.keys():
                tensor = f.get_tensor(key)
                name = key_map[key]
                shape = tuple(_internal_tensor(expected, name).shape)
                if tuple(tensor.shape) != shape:
                    raise ValueError(f"tensor {key!r} has shape {tuple(tensor.shape)}, expected {shape} "
                                     "from config.json")
                if not tensor.is_floating_point():
                    raise ValueError(f"tensor {key!r} has non-floating dtype {tensor.dtype}")
                if dtype is None:
                    dtype = tensor.dtype
                if isinstance(name, tuple):   # one expert of a stacked expert weight
                    stacked, index = name
                    if stacked not in state:
                        state[stacked] = torch.empty(expected[stacked].shape, device=device, dtype=dtype)
                    state[stacked][index].copy_(tensor)
                else:
                    state[name] = tensor.to(device=device, dtype=dtype)
    for name, tensor in expected.items():
        # A MoE checkpoint without selection biases (moe_router_enable_expert_bias false) selects
        # with a bias of zero, as the official model's zero-initialised buffer does.
        if name not in state and name.endswith(".expert_bias"):
            state[name] = torch.zeros(tensor.shape, device=device, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval(), tokenizer
