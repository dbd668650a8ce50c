"""The learned perturbation policy, in one place; resolving one reads top to bottom here.

* ``features``: what the policy sees: per-block features (role, depth, size, scheme, weight statistics) and the
  per-step signal from the optimizer's losses.
* ``network``: the policy network (``PerturbationPolicy``) and ``LearnedSigma``, the sigma hook a ZO optimizer runs.
* ``artifact``: the ``.safetensors`` artifact a registry stores and a downstream job receives (``PolicyArtifact``).
* ``source``: which artifact a spec (FILE, MODEL[@VERSION], auto) names, from a file, the local registry or the
  service: one resolver for all three.
* ``plan``: lr, eps and steps for a run, by one rule (flag, else the policy's recommendation, else the default).
* ``sensitivity``: sensitive-coordinate masks (SensZOQ): profiling, top-k selection, the compact mask file.
* ``show`` and ``compare``: a policy's provenance and sigma map, and policy-vs-MeZO fine-tunes.

The package imports nothing itself, so ``l2lzo.optim`` can use ``sensitivity`` without loading the rest.
"""
