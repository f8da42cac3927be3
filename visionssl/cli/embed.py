"""``visionssl embed`` (one vector per image of a folder, written as ``.npy`` + file list + sidecar) and
``visionssl neighbors`` (the most similar images of a row or of a new image)."""

from __future__ import annotations

import argparse
import re
from typing import Any

from visionssl.backbones.trust import TRUST_CODE_HELP
from visionssl.cli.options import image_size, positive_int


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds ``embed`` and ``neighbors`` to the ``visionssl`` command line."""
    p = sub.add_parser(
        "embed",
        help="write one embedding per image of a folder (.npy + file list + sidecar)",
        description="Runs a checkpoint's frozen backbone over every image under PATH (sub-folders included) and "
        "writes FILE.npy (float32, one row per image), FILE.files.txt (the image paths relative to PATH, one per "
        "row, same order) and FILE.json (the checkpoint's sha256, the preprocessing, the counts, skipped files). "
        "Rows are written in chunks: rerun the same command after an interruption to continue.",
    )
    p.add_argument("--checkpoint", required=True, help="a run directory, a checkpoint file, an export or a zoo name")
    p.add_argument("--data", required=True, metavar="PATH", help="the folder of images")
    p.add_argument("--out", required=True, metavar="FILE", help="the .npy file to write")
    p.add_argument(
        "--image-size", type=image_size, default=None, help="view size (default: the run's augment.image_size, or 224)"
    )
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    p.add_argument("--chunk-size", type=positive_int, default=1024, help="images decoded and written together")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--layer", default="final", help="final (default) or a stage such as stage3")
    p.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="skip unreadable images (named in the sidecar) instead of stopping",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    p.set_defaults(run=run_embed)

    n = sub.add_parser(
        "neighbors",
        help="nearest neighbours (cosine) among written embeddings",
        description="Prints the K rows of FILE most similar to the query: a row number (its own row left out) or "
        "an image file, embedded with the checkpoint and preprocessing recorded in FILE's sidecar (the checkpoint's "
        "sha256 must still match). A whole number is a row; write ./3.png-like paths for files.",
    )
    n.add_argument("--embeddings", required=True, metavar="FILE", help="the .npy written by visionssl embed")
    n.add_argument("--query", required=True, metavar="IMAGE|INDEX", help="an image file or a row number")
    n.add_argument("-k", "--k", type=int, default=None, help="neighbours to print (default 10, or all rows if fewer)")
    n.add_argument("--checkpoint", default=None, help="the model, if it moved (default: the one in the sidecar)")
    n.add_argument("--index", default="flat", help="FAISS index: flat (default), ivf or sharded")
    n.add_argument("--device", default="auto", help="where an image query is embedded: auto, cpu, cuda or cuda:N")
    n.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    n.set_defaults(run=run_neighbors)


def model_record(source: Any) -> dict[str, Any]:
    """What a sidecar records about a resolved checkpoint: the spec, its kind, its backbone and the sha256 of
    its file (the export, the run's checkpoint file, the zoo entry's cached file).

    Example:
        >>> import tempfile, torch, safetensors.torch
        >>> from visionssl.zoo import resolve_checkpoint
        >>> p = tempfile.mkdtemp() + "/w.safetensors"
        >>> safetensors.torch.save_file({"w": torch.ones(1)}, p, metadata={"backbone": "resnet18_cifar"})
        >>> record = model_record(resolve_checkpoint(p))
        >>> record["kind"], record["backbone"], len(record["sha256"])
        ('export', 'resnet18_cifar', 64)
    """
    from visionssl.zoo import sha256_file
    from visionssl.zoo.resolve import checkpoint_file

    path = checkpoint_file(source)  # the one file the weights were read from
    spec = source.spec if source.kind == "zoo" else str(source.path.resolve())
    return {
        "checkpoint": spec,
        "kind": source.kind,
        "file": str(path),
        "sha256": sha256_file(path),
        "backbone": source.backbone,
        "backbone_kwargs": source.backbone_kwargs,
    }


def run_embed(args: argparse.Namespace) -> int:
    from visionssl.backbones.features import resolve_device
    from visionssl.engine.config_checks import check_run_settings
    from visionssl.eval.embed import embed
    from visionssl.eval.embed_store import EmbeddingStore
    from visionssl.eval.layers import with_layer
    from visionssl.zoo import resolve_checkpoint

    store = EmbeddingStore(args.out)  # a bad --out fails before any model is read
    device = resolve_device(args.device, "--device")
    source = resolve_checkpoint(args.checkpoint, trust_code=args.trust_code)
    if source.kind == "run":
        check_run_settings(source.config, str(source.path))
    size = args.image_size or (source.config.get("augment") or {}).get("image_size") or 224
    model = model_record(source)
    backbone = source.build()
    layer = None if args.layer == "final" else args.layer
    with_layer(backbone, layer)  # a bad --layer fails here, naming the valid stages
    features, files = embed(
        backbone,
        args.data,
        out=store.npy,
        image_size=size,
        batch_size=args.batch_size,
        device=device,
        layer=layer,
        chunk_size=args.chunk_size,
        skip_bad_images=args.skip_bad_images,
        model=model,
        progress=not args.no_progress,
    )
    meta = store.read_sidecar() or {}
    print(f"{len(files)} embeddings of {features.shape[1]} dims: {store.npy}  (files: {store.files}, {store.sidecar})")
    for bad in meta.get("skipped", []):
        print(f"skipped {bad['file']}: {bad['reason']}")
    return 0


def run_neighbors(args: argparse.Namespace) -> int:
    from visionssl.eval.embed import neighbors
    from visionssl.eval.embed_store import load_embeddings

    query: int | str = int(args.query) if re.fullmatch(r"\s*-?\d+\s*", args.query) else args.query
    _, files, meta = load_embeddings(args.embeddings)  # a missing or unfinished output fails before any model loads
    backbone = None
    if isinstance(query, str):
        backbone = recorded_model(meta, args.embeddings, args.checkpoint, args.trust_code)
    hits = neighbors(args.embeddings, query, args.k, backbone=backbone, device=args.device, index=args.index)
    print(f"query: {f'row {query} ({files[query]})' if isinstance(query, int) else query}")
    print(f"{'rank':>4}  {'similarity':>10}  file")
    for hit in hits:
        print(f"{hit.rank:>4}  {hit.similarity:>10.4f}  {hit.file}")
    return 0


def recorded_model(meta: dict[str, Any], embeddings: str, checkpoint: str | None, trust_code: bool) -> Any:
    """The backbone that made ``embeddings``: the sidecar's checkpoint (or ``checkpoint``), resolved again and
    checked against the recorded sha256."""
    from visionssl.errors import CheckpointError, DataError
    from visionssl.eval.features import weights_hash
    from visionssl.zoo import resolve_checkpoint

    recorded = meta.get("model") or {}
    spec = checkpoint or recorded.get("checkpoint")
    if not spec:
        raise DataError(
            f"the sidecar of {embeddings} names no checkpoint; pass --checkpoint with the model that made it"
        )
    source = resolve_checkpoint(spec, trust_code=trust_code)
    backbone = source.build()
    digest = weights_hash(backbone) if recorded.get("hash_of") == "weights" else model_record(source)["sha256"]
    if digest != recorded.get("sha256"):
        raise CheckpointError(
            f"checkpoint {spec} (sha256 {digest[:12]}) is not the model that made {embeddings} "
            f"(sha256 {str(recorded.get('sha256'))[:12]}); pass --checkpoint with that model"
        )
    return backbone
