"""The meta-trainer's product: a policy artifact (safetensors + metadata) in the registry or a service.

The metadata names the base model and its fingerprint, the feature spec, the recommended lr / eps / steps,
the meta-training config with both task pools, the policy's size, and the held-out validation metrics; and,
when the validation chose one, the sensitivity mask downstream ZO perturbs on.
"""

from __future__ import annotations

import json
from pathlib import Path

from l2lzo.client import PolicyClient
from l2lzo.errors import L2LZOError
from l2lzo.policy.artifact import MASK_KEY, SIGMA1_LR_KEY
from l2lzo.policy.network import PerturbationPolicy, spec_json
from l2lzo.policy.sensitivity import SensitivityMask
from meta_train.config import MetaTrainConfig
from registry import Registry, RegistryError, build_artifact, normalize_model_id


def base_model_id(model: str) -> str:
    """The registry id of ``model``: itself for an alias or HF id, the folder's name for a local folder."""
    return normalize_model_id(Path(model).name if Path(model).expanduser().is_dir() else model)


def build_policy_artifact(policy: PerturbationPolicy, config: MetaTrainConfig, *, fingerprint: str,
                          recommended_lr: float, metrics: dict, history_tail: list[dict] | None = None,
                          sigma1_lr: float | None = None, mask: SensitivityMask | None = None) -> bytes:
    """The artifact bytes (validated by the registry's own parser). ``sigma1_lr``: the lr the same validation
    picked for sigma = 1 (stored as ``recommended_lr_sigma1``; a draft made before validation has none).
    ``mask``: the sensitivity mask downstream runs perturb on (two tensors and ``mask`` metadata, see
    ``l2lzo.policy.sensitivity``); it must be the base model's, like the policy."""
    arrays = policy.to_arrays()
    mask_meta = None
    if mask is not None:
        if mask.fingerprint != fingerprint:
            raise L2LZOError("the sensitivity mask was made for another base model than the policy")
        mask_arrays, mask_meta = mask.to_artifact()
        arrays.update(mask_arrays)
    training = {**config.to_json(), "resolved_lr": config.resolved_lr(),
                "policy_numbers": policy.numbers, "policy_bytes": sum(a.nbytes for a in arrays.values()),
                "history_tail": history_tail or []}
    metadata = {
        "base_model": base_model_id(config.model),
        "fingerprint": fingerprint,
        "feature_spec": spec_json(policy),
        "recommended_lr": repr(float(recommended_lr)),
        "recommended_eps": repr(float(config.eps)),
        "recommended_steps": str(config.final_steps),
        "training_config": json.dumps(training, sort_keys=True),
        "metrics": json.dumps(metrics, sort_keys=True),
    }
    if sigma1_lr is not None:
        metadata[SIGMA1_LR_KEY] = repr(float(sigma1_lr))
    if mask_meta is not None:
        metadata[MASK_KEY] = mask_meta
    try:
        return build_artifact(arrays, metadata)
    except RegistryError as exc:
        raise L2LZOError(f"cannot build the policy artifact: {exc}") from exc


def publish(data: bytes, config: MetaTrainConfig) -> str:
    """Push to ``config.server`` (with the upload token) or the local registry; returns ``MODEL@VERSION``."""
    model = base_model_id(config.model)
    if config.server:
        token = _token(config.token_file)
        with PolicyClient(config.server) as client:
            record = client.upload(model, data, token)
    else:
        try:
            record = Registry(config.registry).push(data, model).record.to_json()
        except RegistryError as exc:
            raise L2LZOError(f"cannot store the policy: {exc}") from exc
    return f"{record['model']}@{record['version']}"


def _token(token_file: str | None) -> str:
    from registry.tokens import load_token

    token = load_token(token_file)
    if token is None:
        raise L2LZOError("pushing to --server needs the upload token: --token-file or $L2LZO_REGISTRY_TOKEN")
    return token
