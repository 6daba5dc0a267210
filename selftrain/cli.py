"""The `selftrain` command: one entry point whose subcommands call core, the jobs and the service.

Heavy imports (torch, ray, fastapi) happen inside each subcommand, so `selftrain --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Dataset formats with labels in their own layout (core.datasets), and Mapillary's versions.
LABELED_FORMATS = ("cityscapes", "camvid", "mapillary", "bdd100k", "kitti")
MAPILLARY_VERSIONS = ("v1.2", "v2.0")


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``"HxW"`` (e.g. ``"256x512"``) into (height, width).

    Args:
        text: Height and width joined by ``x``, case and surrounding spaces ignored.

    Returns:
        (height, width) in pixels.

    Raises:
        ValueError: The text is not two integers >= 32 joined by ``x``.
    """
    # Imported here, not at the top, so that `selftrain --help` does not load numpy and OpenCV.
    from core.synth import check_size

    parts = text.strip().lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"size {text!r} is not HEIGHTxWIDTH, e.g. 256x512")
    return check_size((int(parts[0]), int(parts[1])))


def _cmd_synth(args: argparse.Namespace) -> int:
    from core.synth import write_synthetic_dataset

    paths = write_synthetic_dataset(
        args.out,
        n=args.n,
        domain=args.domain,
        size=parse_size(args.size),
        seed=args.seed,
        split=args.split,
    )
    print(f"wrote {len(paths)} {args.domain} scenes ({args.size}) to {args.out}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    import torch

    from core.models import build_model, count_parameters, list_models
    from core.models.smp import smp_architectures, smp_encoders, smp_installed

    height, width = parse_size(args.size)
    torch.set_grad_enabled(False)
    rows = []
    for name in list_models():
        if name == "smp" and not smp_installed():
            if not args.json:
                print(f"{name:28s} not installed (pip install -e '.[smp]')")
            continue
        model = build_model(name, args.num_classes).eval()
        row = {"model": name, "parameters": count_parameters(model)}
        if not args.no_forward:
            start = time.perf_counter()
            out = model(torch.zeros(1, 3, height, width))
            row["forward_s"] = round(time.perf_counter() - start, 3)
            row["output"] = list(out.shape)
        rows.append(row)
        if not args.json:
            extra = (
                f"  forward {row['forward_s']:.2f}s -> {row['output']}" if "output" in row else ""
            )
            print(f"{name:28s} {row['parameters'] / 1e6:8.2f}M{extra}", flush=True)
        del model
    if args.json:
        for row in rows:
            if row["model"] == "smp":
                row.update(architectures=smp_architectures(), encoders=smp_encoders())
        print(json.dumps(rows))
    elif smp_installed():
        print(
            f"smp (model_options arch, encoder; the row above: Unet, resnet34)\n"
            f"  architectures: {', '.join(smp_architectures())}\n"
            f"  encoders: {', '.join(smp_encoders())}, or tu-<any timm model>"
        )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from core.checkpoint import load_checkpoint
    from core.configs import DataSource
    from core.evaluate import evaluate_checkpoint

    if args.format == "folder":
        # A paired folder (images/ + labels/) whose labels hold the checkpoint's train ids.
        classes = load_checkpoint(args.checkpoint)["label_space"]["names"]
        source = DataSource(format="paired", root=args.root, split=args.split, classes=classes)
    else:
        source = DataSource(
            format=args.format, root=args.root, split=args.split, version=args.version
        )
    result = evaluate_checkpoint(args.checkpoint, source, mode=args.mode)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'class':20s} IoU")
    for name, iou in result["per_class_iou"].items():
        print(f"{name:20s} {'  n/a' if iou is None else f'{100 * iou:5.1f}'}")
    print(f"{'mIoU':20s} {100 * result['miou']:5.1f}  ({result['n_images']} images)")
    for key, title in (("category_miou", "category mIoU"), ("iiou", "iIoU"),
                       ("category_iiou_mean", "category iIoU")):  # fmt: skip
        if result.get(key) is not None:
            print(f"{title:20s} {100 * result[key]:5.1f}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from core.export import export_onnx

    size = None if args.size is None else parse_size(args.size)
    images = _check_images(args.images, args.n, size)
    result = export_onnx(
        args.checkpoint, args.out, images, args.opset, args.min_agreement, size=size
    )
    print(json.dumps(result))
    return 0


def _check_images(folder: str | None, n: int, size: tuple[int, int] | None) -> list:
    """The first ``n`` images of ``folder`` (sorted, recursive), else ``n`` synthetic scenes in
    two sizes (``size`` if one is fixed), so the check covers more than one height and width."""
    import numpy as np

    from core.configs import DataSource
    from core.datasets import open_source
    from core.io import read_image
    from core.synth import generate_scene

    if folder is not None:
        paths = open_source(DataSource(format="folder", root=folder)).image_paths()[:n]
        return [read_image(path) for path in paths]
    rng = np.random.default_rng(0)
    sizes = [size] if size is not None else [(256, 512), (192, 320)]
    return [generate_scene(rng, sizes[i % len(sizes)])[0] for i in range(n)]


def _cmd_store_info(args: argparse.Namespace) -> int:
    from core.store import LabelStore
    from core.store_check import verify_store

    store = LabelStore.open(args.store, read_only=True)
    print(json.dumps(store.summary(), indent=None if args.compact else 2))
    if not args.verify:
        return 0
    problems = verify_store(store)
    for problem in problems:
        print(f"selftrain store-info: {store.path}: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _cmd_promoted(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from core.gate import table_lines
    from core.registry import folder_records, mlflow_records

    if args.tracking_uri:
        records, problems = mlflow_records(args.tracking_uri, args.name), []
    else:
        records, problems = folder_records(args.runs or ["."])
    for problem in problems:
        print(f"selftrain promoted: skipped {problem}", file=sys.stderr)
    records = [r for r in records if args.name is None or r.name == args.name]
    records.sort(key=lambda r: r.registered_at, reverse=True)
    if args.json:
        print(json.dumps([r.model_dump(mode="json") for r in records]))
        return 0
    for r in records:
        when = datetime.fromtimestamp(r.registered_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        print(f"{r.name}  {r.uri}  {when}  loop {r.loop}  {r.checkpoint}")
        for line in table_lines(r.gate):
            print(line)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from services.serve import serve

    serve(host=args.host, port=args.port)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from selftrain.local import main as run_main

    return run_main(args.spec, args.output, args.data_root, args.test)


def _cmd_predict(args: argparse.Namespace) -> int:
    from core.configs import DataSource
    from core.datasets import open_source
    from core.label_export import predict_folder

    source = DataSource(format=args.source_format, root=args.source, split=args.split)
    n_images = len(open_source(source))
    if n_images <= args.ray_above:
        result = predict_folder(args.checkpoint, source, args.out, args.format, args.mode)
    else:  # many images: the label job's teacher actors on Ray, then the store written out
        result = _predict_on_ray(args, source)
    print(json.dumps(result))
    return 0


def _predict_on_ray(args: argparse.Namespace, source) -> dict:
    from core.configs import LabelJobConfig
    from core.label_export import export_store
    from jobs import label

    store = Path(args.out) / ".predictions.zarr"
    config = LabelJobConfig(
        teacher_checkpoint=args.checkpoint,
        source=source,
        store=str(store),
        mode=args.mode,
        num_actors=args.actors,
        cpus_per_actor=1.0,
    )
    label.run(config)
    return {**export_store(store, args.out, args.format), "store": str(store)}


def _cmd_store_export(args: argparse.Namespace) -> int:
    from core.label_export import export_store

    print(json.dumps(export_store(args.store, args.out, args.format)))
    return 0


def _cmd_review_export(args: argparse.Namespace) -> int:
    from core.review import export_review

    other = {"against": args.against, "student": args.student, "scan": args.scan}
    print(json.dumps(export_review(args.store, args.out, args.n, args.by, args.format, **other)))
    return 0


def _cmd_review_import(args: argparse.Namespace) -> int:
    from core.review import import_review
    from core.store import LabelStore

    space = LabelStore.open(args.store, read_only=True).label_space
    print(json.dumps(import_review(args.export, args.images, args.out, space)))
    return 0


def _cmd_datasets_check(args: argparse.Namespace) -> int:
    from core.configs import DataSource
    from core.dataset_check import check_dataset

    classes = args.classes.split(",") if args.classes else None
    source = DataSource(
        format=args.format, root=args.root, split=args.split, version=args.version, classes=classes
    )
    report = check_dataset(source, args.max_images)
    if args.json:
        print(json.dumps(report))
        return 0 if report["ok"] else 1
    print(
        f"{args.root} ({args.format}, {args.split}): {report['images']} images, "
        f"{report['labeled']} labeled, {report['checked']} labels read"
    )
    for kind, found in report["problems"].items():
        print(f"  {kind}: {found['count']}")
        for example in found["examples"]:
            print(f"    {example}")
    shares = sorted(report["class_pixel_share"].items(), key=lambda kv: -kv[1])
    print("  class pixel shares: " + ", ".join(f"{n} {100 * v:.1f} %" for n, v in shares))
    print("ok" if report["ok"] else "problems found")
    return 0 if report["ok"] else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from selftrain.demo import main as demo_main

    return demo_main(args)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selftrain", description="Distributed self-training for semantic segmentation."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(sub)
    _add_label_file_commands(sub)
    _add_run_commands(sub)
    return parser


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    """synth, models, evaluate, export, store-info."""
    p = sub.add_parser("synth", help="write synthetic driving scenes in the Cityscapes layout")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--domain", choices=["source", "target"], default="source")
    p.add_argument("--size", default="256x512", help="HxW")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("models", help="list models with parameter counts (and a forward pass)")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--size", default="512x1024", help="HxW of the forward pass")
    p.add_argument("--no-forward", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("evaluate", help="per-class IoU and mIoU of a checkpoint on a labeled split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--format",
        choices=[*LABELED_FORMATS, "folder"],
        required=True,
    )
    p.add_argument("--root", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--version", choices=MAPILLARY_VERSIONS, default="v1.2", help="Mapillary Vistas")
    p.add_argument("--mode", choices=["whole", "slide", "multiscale"], default="whole")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser(
        "export",
        help="a checkpoint as ONNX (uint8 RGB in, logits out), checked with ONNX Runtime",
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--format", choices=["onnx"], default="onnx")
    p.add_argument("--out", required=True, help="the .onnx file (written only if the check passes)")
    p.add_argument(
        "--size",
        help="HxW: a fixed input size (needed by models with pyramid pooling: fast_scnn, pspnet); "
        "default: any height and width",
    )
    p.add_argument("--images", help="check images: a folder (default: synthetic scenes)")
    p.add_argument("--n", type=int, default=8, help="check images to use")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--min-agreement", type=float, default=0.999)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("store-info", help="JSON summary of a label store")
    p.add_argument("store")
    p.add_argument("--compact", action="store_true")
    p.add_argument(
        "--verify",
        action="store_true",
        help="also read every done image's chunks; one line per problem on stderr, exit 1 if any",
    )
    p.set_defaults(func=_cmd_store_info)


def _add_label_file_commands(sub: argparse._SubParsersAction) -> None:
    """datasets check, predict, store-export."""
    datasets = sub.add_parser("datasets", help="check a labeled dataset").add_subparsers(
        dest="datasets_command", required=True
    )
    p = datasets.add_parser(
        "check",
        help="every label file: missing pairs, palette or color labels, bit depth, ids outside "
        "the label space, size mismatches, class pixel shares; exit 1 if any problem",
    )
    p.add_argument(
        "--format",
        choices=[*LABELED_FORMATS, "paired"],
        required=True,
    )
    p.add_argument("--root", required=True)
    p.add_argument("--split", default="train")
    p.add_argument("--version", choices=MAPILLARY_VERSIONS, default="v1.2", help="Mapillary Vistas")
    p.add_argument("--classes", help="format paired: the class names, comma-separated")
    p.add_argument("--max-images", type=int, default=None, help="read only the first N labels")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_datasets_check)

    p = sub.add_parser("predict", help="a model's label PNGs for every image of a folder")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--source", required=True, help="the images' folder (or dataset root)")
    p.add_argument(
        "--source-format",
        choices=["folder", *LABELED_FORMATS],
        default="folder",
    )
    p.add_argument("--split", default="val", help="the split, for a dataset root")
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["png", "cityscapes"], default="png")
    p.add_argument("--mode", choices=["whole", "slide", "multiscale"], default="whole")
    p.add_argument(
        "--ray-above",
        type=int,
        default=1000,
        help="more images than this: label them with the label job on Ray (embedded here, or "
        "RAY_ADDRESS's cluster)",
    )
    p.add_argument("--actors", type=int, default=1, help="teacher actors of that label job")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("store-export", help="a label store's pseudo labels as PNGs")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--format", choices=["png", "cityscapes"], default="png")
    p.set_defaults(func=_cmd_store_export)

    _add_review_commands(sub)


def _add_review_commands(sub: argparse._SubParsersAction) -> None:
    """review export, review import."""
    review = sub.add_parser(
        "review", help="send the least certain pseudo labels to annotators, read corrections back"
    ).add_subparsers(dest="review_command", required=True)
    p = review.add_parser("export", help="images and pseudo labels for CVAT or Label Studio")
    p.add_argument("--store", required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument(
        "--by",
        choices=["lowest-confidence", "class-rarity", "disagreement"],
        default="lowest-confidence",
        help="disagreement: with another model, --against STORE or --student CHECKPOINT",
    )
    p.add_argument("--against", help="a store of the same images (e.g. the next loop's)")
    p.add_argument("--student", help="a checkpoint to predict --scan images with")
    p.add_argument("--scan", type=int, help="rank only this many images, spread over the store")
    p.add_argument("--format", choices=["cvat", "label-studio"], required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_review_export)
    p = review.add_parser("import", help="corrected masks as a labeled (paired) source")
    p.add_argument(
        "--export", required=True, help="CVAT's Segmentation mask zip or Label Studio's JSON"
    )
    p.add_argument("--images", required=True, help="the images/ folder review export wrote")
    p.add_argument("--store", required=True, help="the store whose classes the masks use")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_review_import)


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    """serve, run, demo."""
    p = sub.add_parser("serve", help="the control plane: REST API, dashboard, prediction")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("run", help="a whole run spec (teacher, labels, students, loops) here")
    p.add_argument("--spec", required=True, help="the run spec, YAML or JSON (as POST /api/runs)")
    p.add_argument("--output", required=True, help="where the run's stages write")
    p.add_argument(
        "--data-root",
        action="append",
        default=[],
        help="a folder the spec's paths must lie in (relative paths: the first); default: .",
    )
    p.add_argument(
        "--test",
        action="append",
        default=[],
        metavar="NAME=FORMAT:ROOT[:SPLIT]",
        help="score every trained model on this labeled set at the end (repeatable)",
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("promoted", help="the promoted models and their gate tables")
    p.add_argument("--name", help="only the models of this name")
    p.add_argument("--runs", action="append", help="a run folder, or a folder of them (default: .)")
    p.add_argument("--tracking-uri", help="read MLflow's Model Registry there instead")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_promoted)

    p = sub.add_parser("demo", help="teacher -> pseudo labels -> student on synthetic scenes")
    p.add_argument("--workdir", default="selftrain-demo", help="where data and results go")
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes and of training")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    p.set_defaults(func=_cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Exception as exc:  # a project error, also one raised in a Ray worker; else re-raised
        from core.errors import one_line, project_error

        error = project_error(exc)
        if error is None:
            raise
        print(f"selftrain {args.command}: {one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
