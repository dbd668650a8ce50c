"""``l2lzo registry ...``: list, show, push, pull and verify policies from the command line.

``register(subparsers)`` adds the command group to an argparse parser; every handler is ``args.func(args)``
and raises ``RegistryError`` for user errors (the caller prints it as one line and exits with status 2).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
from pathlib import Path

from registry.artifact import read_metadata
from registry.errors import InvalidArtifact, RegistryError
from registry.ids import model_dirname
from registry.store import Registry


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``registry`` and its subcommands to ``subparsers``; returns the ``registry`` parser."""
    parser = subparsers.add_parser(
        "registry", help="list, inspect, push and pull learned policies",
        description="Manage a policy registry: policy artifacts (.safetensors) keyed by base model, with "
                    "immutable integer versions and a 'latest' alias. The registry is a local folder or an "
                    "fsspec URL (memory://, s3://bucket/path, ...).")
    parser.add_argument("--registry", metavar="ROOT", default=None,
                        help="registry folder or URL (default: $L2LZO_REGISTRY, else "
                             "$XDG_DATA_HOME/l2lzo/registry, else ~/.local/share/l2lzo/registry)")
    sub = parser.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")

    listing = sub.add_parser("list", help="every model with its latest version and version count")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=_run_list)

    show = sub.add_parser("show", help="the versions of a model, or one version's metadata",
                          description="MODEL lists its versions; MODEL@VERSION prints that version's record and "
                                      "metadata (VERSION is a number or 'latest').")
    show.add_argument("spec", metavar="MODEL[@VERSION]")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_run_show)

    push = sub.add_parser("push", help="validate a policy file and store it as the model's next version",
                          description="Push FILE as --model's next version, or with --shipped every policy that "
                                      "ships with l2lzo, each under its own base model (a file the model's latest "
                                      "version already holds is not pushed again).")
    push.add_argument("file", metavar="FILE", nargs="?", help="policy artifact (.safetensors)")
    push.add_argument("--model", help="base model id; must match the file's base_model metadata")
    push.add_argument("--shipped", action="store_true",
                      help="seed the registry with the policies shipped with l2lzo instead of FILE")
    push.set_defaults(func=_run_push)

    pull = sub.add_parser("pull", help="copy a stored version to a file (checked against its sha256)")
    pull.add_argument("spec", metavar="MODEL[@VERSION]", help="VERSION is a number or 'latest' (default)")
    pull.add_argument("-o", "--output", metavar="PATH", default=None,
                      help="output file or existing folder (default: ./<model>-v<VERSION>.safetensors)")
    pull.set_defaults(func=_run_pull)

    verify = sub.add_parser("verify", help="re-check every stored file; exits non-zero when problems are found")
    verify.add_argument("--repair", action="store_true",
                        help="first delete the temp files that interrupted pushes left (the only problem that is "
                             "safe to fix automatically; `l2lzo serve` also does this when it starts)")
    verify.set_defaults(func=_run_verify)
    return parser


def _open(args: argparse.Namespace) -> Registry:
    return Registry(args.registry)


def _split_spec(spec: str) -> tuple[str, str]:
    # Model ids cannot contain '@', so the last '@' always separates the version.
    model, at, version = spec.rpartition("@")
    return (model, version) if at else (spec, "latest")


def _run_list(args: argparse.Namespace) -> None:
    registry = _open(args)
    summaries = registry.summaries()
    if args.json:
        print(json.dumps([s.to_json() for s in summaries], indent=2))
        return
    if not summaries:
        print(f"no policies in registry {registry.root}")
        return
    rows = [(s.latest.model, str(s.latest.version), str(s.count), s.latest.metadata["created_at"],
             _size(s.latest.size)) for s in summaries]
    _print_table(("MODEL", "LATEST", "VERSIONS", "CREATED", "SIZE"), rows)


def _run_show(args: argparse.Namespace) -> None:
    registry = _open(args)
    model, version = _split_spec(args.spec)
    if "@" in args.spec:
        record = registry.get(model, version)
        if args.json:
            print(json.dumps(record.to_json(), indent=2))
            return
        lines = [("model", record.model), ("version", str(record.version)), ("sha256", record.sha256),
                 ("size", f"{record.size} bytes"), *sorted(record.metadata.items())]
        width = max(len(key) for key, _ in lines)
        for key, value in lines:
            print(f"{key:<{width}}  {value}")
        return
    records = registry.versions(model)
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=2))
        return
    rows = [(str(r.version), r.metadata["created_at"], _size(r.size), r.sha256[:12], r.metadata["fingerprint"][:12],
             r.metadata["recommended_lr"], r.metadata["recommended_eps"], r.metadata["recommended_steps"])
            for r in records]
    _print_table(("VERSION", "CREATED", "SIZE", "SHA256", "FINGERPRINT", "LR", "EPS", "STEPS"), rows)


def _run_push(args: argparse.Namespace) -> None:
    registry = _open(args)
    if args.shipped == (args.file is not None):
        raise RegistryError("registry push takes FILE --model MODEL, or --shipped")
    if args.shipped:
        from l2lzo.policy.zoo import shipped_files

        paths = shipped_files()
        if not paths:
            raise RegistryError("this l2lzo ships no policies")
        for path in paths:
            data = _read(path, registry)
            _push(registry, data, read_metadata(data, size=len(data))["base_model"])  # push verifies it all
        return
    if args.model is None:
        raise RegistryError("registry push FILE needs --model")
    _push(registry, _read(Path(args.file), registry), args.model)


def _read(path: Path, registry: Registry) -> bytes:
    try:
        size = path.stat().st_size
        if size > registry.max_bytes:
            raise InvalidArtifact(f"{path} is {size} bytes, limit {registry.max_bytes}")
        return path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror or exc}") from None


def _push(registry: Registry, data: bytes, model: str) -> None:
    record, created = registry.push(data, model)
    if created:
        print(f"pushed {record.model} version {record.version} ({record.size} bytes, sha256 {record.sha256}) "
              f"to {registry.root}")
    else:
        print(f"{record.model} version {record.version} in {registry.root} already holds these bytes "
              f"(sha256 {record.sha256}): nothing pushed")


def _run_pull(args: argparse.Namespace) -> None:
    registry = _open(args)
    model, version = _split_spec(args.spec)
    record = registry.get(model, version)
    data = registry.read_bytes(record)
    default_name = f"{model_dirname(record.model)}-v{record.version}.safetensors"
    target = Path(args.output) if args.output else Path(default_name)
    if target.is_dir():
        target = target / default_name
    _write_atomically(target, data)
    print(f"{record.model} version {record.version} (sha256 {record.sha256}) -> {target}")


def _run_verify(args: argparse.Namespace) -> None:
    registry = _open(args)
    if args.repair:
        try:
            removed = registry.remove_stale_temp_files()
        except OSError as exc:
            raise RegistryError(f"cannot repair registry {registry.root}: {exc.strerror or exc}") from None
        for location in removed:
            print(f"removed {location} (left by an interrupted push)")
    problems = registry.verify()
    for problem in problems:
        print(problem)
    if problems:
        raise RegistryError(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} in registry {registry.root}")
    summaries = registry.summaries()
    print(f"registry {registry.root}: {len(summaries)} models, {sum(s.count for s in summaries)} versions, "
          "no problems")


def _write_atomically(target: Path, data: bytes) -> None:
    # A reader of the output path (or a crash) never sees a half-written policy.
    temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise RegistryError(f"cannot write {target}: {exc.strerror or exc}") from None


def _size(size: int) -> str:
    return f"{size / 1024:.1f} KiB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MiB"


def _print_table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in (headers, *rows):
        print("  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=True)).rstrip())

