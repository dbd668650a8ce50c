"""Schemes pick the trainable tensors; blocks get roles and depths; model loading and fingerprints."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from l2lzo import models
from l2lzo.blocks import discover_blocks, role_of
from l2lzo.errors import L2LZOError
from l2lzo.models import CAUSAL, ENCODER, fingerprint, load_model, tiny_model
from l2lzo.schemes import SCHEMES, apply_scheme

EXPECTED_ROLES = {
    "full": None,
    "lora": {"lora_A", "lora_B"},
    "prefix": {"prefix"},
    "prompt": {"prompt"},
}


@pytest.mark.parametrize("family", [CAUSAL, ENCODER])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_scheme_sets_exactly_its_trainable_tensors(family, scheme):
    loaded = apply_scheme(tiny_model(family), scheme)
    blocks = discover_blocks(loaded.model)
    trainable = [n for n, p in loaded.model.named_parameters() if p.requires_grad]
    assert len(blocks) == len(trainable) > 0
    if scheme == "full":
        assert len(blocks) == len(list(loaded.model.parameters()))
    else:
        assert {b.role for b in blocks} == EXPECTED_ROLES[scheme]


def test_unknown_scheme():
    with pytest.raises(L2LZOError, match="unknown scheme 'qlora'"):
        apply_scheme(tiny_model(CAUSAL), "qlora")


@pytest.mark.parametrize(("name", "role"), [
    ("model.layers.3.self_attn.q_proj.weight", "q"),
    ("model.layers.3.self_attn.q_proj.lora_A.default.weight", "lora_A"),
    ("encoder.layer.1.attention.self.value.weight", "v"),
    ("encoder.layer.1.attention.output.dense.weight", "o"),
    ("encoder.layer.1.intermediate.dense.weight", "up"),
    ("encoder.layer.1.output.dense.weight", "down"),
    ("model.layers.0.mlp.gate_proj.weight", "gate"),
    ("model.norm.weight", "norm"),
    ("embeddings.word_embeddings.weight", "embed"),
    ("lm_head.weight", "head"),
    ("something_else", "other"),
])
def test_roles(name, role):
    assert role_of(name) == role


def test_roles_use_module_classes_where_names_are_ambiguous():
    name = "prompt_encoder.default.embedding.weight"
    assert role_of(name, "PeftModel ModuleDict PrefixEncoder") == "prefix"
    assert role_of(name, "PeftModel ModuleDict PromptEmbedding") == "prompt"


def test_blocks_depth_and_tied_weights():
    blocks = discover_blocks(tiny_model(CAUSAL, layers=3).model)
    by_name = {b.name: b for b in blocks}
    assert by_name["model.layers.0.self_attn.q_proj.weight"].depth == 0.0
    assert by_name["model.layers.2.self_attn.q_proj.weight"].depth == 1.0
    assert by_name["model.layers.1.mlp.up_proj.weight"].depth == 0.5
    embed = by_name["model.embed_tokens.weight"]
    assert len(embed.owners) == 2  # tied with lm_head: one block, perturbed consistently in both places
    assert "lm_head.weight" not in by_name


def test_fingerprint_depends_on_architecture_not_values():
    a, b = tiny_model(CAUSAL, seed=0).model, tiny_model(CAUSAL, seed=1).model
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(tiny_model(CAUSAL, layers=3).model)
    with torch.no_grad():
        next(a.parameters()).add_(1.0)
    assert fingerprint(a) == fingerprint(b)


def test_fingerprint_formula_is_pinned():
    """Stored policies are keyed by this hash: sha256 of the sorted "name:shape:dtype" lines of the state dict.
    Any change to the formula orphans every policy in every registry, so it must show up here (the smoke tests
    pin the real models' values)."""
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    model[1].to(torch.float16)
    assert fingerprint(model) == "76f4c35d7a703f8d52d7f71dab3f89e18697a68952e5336d2d1a3430d64e45a4"


def test_unknown_model_fails_fast_with_one_line(tmp_path):
    with pytest.raises(L2LZOError, match="cannot be loaded") as info:
        load_model("no-such-org/no-such-model")
    assert "\n" not in str(info.value)
    with pytest.raises(L2LZOError, match="cannot be loaded"):
        load_model(str(tmp_path))  # an empty folder


def test_local_folder_round_trip(tmp_path):
    loaded = tiny_model(CAUSAL)
    loaded.model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    assert again.family == CAUSAL and fingerprint(again.model) == fingerprint(loaded.model)
    assert again.tokenizer.padding_side == "left"


def test_concurrent_first_loads_convert_once_and_never_see_a_half_replaced_folder(tmp_path, monkeypatch):
    """Two first loads at once (Ray workers) once both converted, and the second replaced the folder while the
    first read it. Under the conversion lock one converts and the other waits and finds it done."""
    monkeypatch.setenv("L2LZO_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(models, "_package_dir", lambda package: tmp_path)
    conversions = []

    def slow_rebuild(package_dir, target):
        conversions.append(target)
        time.sleep(0.3)  # long enough for the other thread to arrive while this one converts
        tmp = tmp_path / f".{target.name}-partial"
        tmp.mkdir()
        (tmp / "model.safetensors").write_text("weights")
        os.replace(tmp, target)

    monkeypatch.setattr(models, "_rebuild_smollm2", slow_rebuild)
    with ThreadPoolExecutor(4) as pool:
        folders = list(pool.map(lambda _: models._builtin_folder("smollm2-135m"), range(4)))
    assert len(conversions) == 1
    assert all((f / "model.safetensors").read_text() == "weights" for f in folders)
