"""``visionssl zoo list|info|download|verify|pin|convert``: the model zoo from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import yaml

from visionssl.backbones.trust import TRUST_CODE_HELP
from visionssl.cli.options import positive_seconds
from visionssl.zoo.download import DEFAULT_TIMEOUT

OFFLINE_HELP = "use only the cache and local files (same as VISIONSSL_OFFLINE=1)"
UNSAFE_HELP = (
    "allow full unpickling of a checkpoint the safe loader refuses; it runs any code in the file, "
    "so use it only for files from a source you trust"
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``zoo`` (with its sub-commands) to the ``visionssl`` command line."""
    zoo = subparsers.add_parser(
        "zoo",
        help="pretrained checkpoints: list, info, download, verify, pin, convert",
        description="The model zoo (model_zoo.yaml, plus $VISIONSSL_HOME/zoo.yaml and VISIONSSL_ZOO files). "
        "Downloads go to $VISIONSSL_HOME/zoo (default ~/.cache/visionssl/zoo).",
    )
    sub = zoo.add_subparsers(dest="zoo_command", required=True, metavar="ZOO_COMMAND")

    p = sub.add_parser("list", help="list the zoo entries")
    p.add_argument("pattern", nargs="?", default="*", help="wildcard pattern on names (default: all)")
    p.add_argument("--markdown", action="store_true", help="print the README table (Markdown)")
    p.set_defaults(run=run_list)

    p = sub.add_parser("info", help="show an entry, where its file is cached and whether it is there")
    p.add_argument("name")
    p.set_defaults(run=run_info)

    p = sub.add_parser("download", help="download and verify a checkpoint into the cache")
    p.add_argument("name")
    p.add_argument("--force", action="store_true", help="download again even if cached")
    add_network_options(p)
    p.set_defaults(run=run_download)

    p = sub.add_parser("verify", help="re-hash a downloaded checkpoint and check it against the zoo")
    p.add_argument("name")
    p.set_defaults(run=run_verify)

    p = sub.add_parser(
        "pin",
        help="record the sha256 of an entry that has none (trust on first use)",
        description="Downloads the file if needed and writes the entry, with its sha256, to your zoo file "
        "(--file, else the user file it came from, else the first VISIONSSL_ZOO file, else "
        "$VISIONSSL_HOME/zoo.yaml), with its size. The packaged model_zoo.yaml is never modified. For a team: "
        "pin to a project file (--file project/zoo.yaml), commit it, and set VISIONSSL_ZOO=project/zoo.yaml; every "
        "later download must then match that sha256 and stops past that size.",
    )
    p.add_argument("name")
    p.add_argument("--file", default=None, help="zoo file to write the pinned entry to")
    add_network_options(p)
    p.set_defaults(run=run_pin)

    p = sub.add_parser(
        "convert",
        help="convert a checkpoint (zoo name or upstream file) to a timm safetensors file",
        description="Writes the backbone weights with timm key names as safetensors, loadable with "
        "timm.create_model(BACKBONE, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file=OUT)) "
        "for a timm model, or vs.zoo.load_backbone(OUT) for any backbone (also visionssl's own, e.g. resnet18_cifar).",
    )
    p.add_argument("source", help="a zoo name, or a checkpoint file (then give --format and --backbone)")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument(
        "--format", default=None, help="upstream format of a file (see `visionssl zoo info`; e.g. moco, vissl)"
    )
    p.add_argument("--backbone", default=None, help="timm / visionssl backbone name for a file (e.g. resnet50)")
    p.add_argument("--unsafe-load", action="store_true", help=UNSAFE_HELP)
    p.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    add_network_options(p)
    p.set_defaults(run=run_convert)


def add_network_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--offline", action="store_true", default=None, help=OFFLINE_HELP)
    p.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT,
        help="idle limit: seconds with less than 1 KiB from a server (default %(default)s)",
    )
    p.add_argument(
        "--total-timeout",
        type=positive_seconds,
        default=None,
        help="seconds a whole download from one server may take (default: no limit)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_list(args: argparse.Namespace) -> int:
    from visionssl import zoo

    if args.markdown:
        print(zoo.markdown_table())
        return 0
    entries = zoo.all_entries()
    names = zoo.filter_names(entries, args.pattern)
    if not names:
        print(f"no zoo entry matches {args.pattern!r}", file=sys.stderr)
        return 1
    for name in names:
        entry = entries[name]
        metric = f"{entry.metrics[0]['name']}={entry.metrics[0]['value']}" if entry.metrics else ""
        cached = "cached" if zoo.cached_path(entry).is_file() else ""
        print(f"{name:<32} {entry.method:<14} {entry.backbone:<12} {metric:<28} {cached}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from visionssl import zoo

    entry = zoo.info(args.name)
    print(yaml.safe_dump(entry.to_dict(), sort_keys=False).rstrip())
    path = zoo.cached_path(entry)
    print(f"# from: {entry.origin}")
    print(f"# cache: {path} ({'present' if path.is_file() else 'not downloaded'})")
    if entry.sha256 is None:
        print("# no sha256: downloads are trusted on first use; `visionssl zoo pin` records the hash")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from visionssl import zoo

    with warnings.catch_warnings():
        warnings.simplefilter("always", zoo.UnverifiedDownloadWarning)
        path = zoo.download(args.name, force=args.force, **network_kwargs(args))
    print(path)
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from visionssl import zoo

    digest = zoo.verify(args.name)
    entry = zoo.info(args.name)
    if entry.sha256 is None:
        print(f"{digest}  (no sha256 in the zoo to check against; `visionssl zoo pin {args.name}` records this one)")
    else:
        print(f"{digest}  OK")
    return 0


def run_pin(args: argparse.Namespace) -> int:
    from visionssl import zoo

    digest, written = zoo.pin(args.name, file=args.file, **network_kwargs(args))
    if written is None:
        print(f"{args.name} already has a sha256 ({digest}); nothing to pin")
    else:
        print(f"pinned {args.name}: sha256 {digest} written to {written} (trust on first use)")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from safetensors.torch import save_file

    from visionssl import zoo

    if Path(args.source).exists():
        if not (args.format and args.backbone):
            raise zoo.ZooError(
                f"converting the file {args.source} needs --format ({', '.join(zoo.list_formats())}) and --backbone"
            )
        path, fmt, backbone, kwargs = Path(args.source), args.format, args.backbone, {}
    else:
        from visionssl.backbones.trust import check_backbone_spec

        entry = zoo.info(args.source)
        check_backbone_spec(  # the entry's backbone and arguments are the zoo file's word: check them first
            args.backbone or entry.backbone,
            entry.backbone_kwargs,
            source=f"zoo entry {entry.name!r} ({entry.origin})",
            trust_code=args.trust_code or bool(args.backbone),  # a --backbone is the user's word
        )
        path = zoo.fetch(entry, **network_kwargs(args))
        fmt, backbone, kwargs = entry.format, args.backbone or entry.backbone, entry.backbone_kwargs
    net = zoo.load_file(path, fmt, backbone, unsafe=args.unsafe_load, **kwargs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(
        state,
        str(out),
        metadata={
            "format": "visionssl",
            "backbone": backbone,
            "backbone_kwargs": json.dumps(dict(kwargs)),
            "source": str(path),
        },
    )
    print(f"{out}  sha256 {zoo.sha256_file(out)}")
    print(f"load with: {load_hint(backbone, kwargs, out)}")
    return 0


def load_hint(backbone: str, kwargs: dict, out: Path) -> str:
    """The Python line that loads a converted file: timm knows its own models, not visionssl's (resnet18_cifar).

    Example:
        >>> load_hint("resnet18_cifar", {}, Path("w.safetensors"))
        "vs.zoo.load_backbone('w.safetensors')  # or: net = vs.create_backbone('resnet18_cifar'); net.load_state_dict(safetensors.torch.load_file('w.safetensors'))"
    """
    from visionssl.backbones import BACKBONES

    if backbone in BACKBONES:
        args = "".join(f", {k}={v!r}" for k, v in dict(kwargs).items())
        return (
            f"vs.zoo.load_backbone({str(out)!r})  # or: net = vs.create_backbone({backbone!r}{args}); "
            f"net.load_state_dict(safetensors.torch.load_file({str(out)!r}))"
        )
    return f"timm.create_model({backbone!r}, pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(file={str(out)!r}))"


def network_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {"offline": args.offline, "timeout": args.timeout, "progress": not args.no_progress}
    return kwargs | ({"total_timeout": args.total_timeout} if args.total_timeout is not None else {})
