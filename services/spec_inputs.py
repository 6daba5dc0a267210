"""The paths and data a run spec names, resolved and checked on the file system: paths inside the
data roots, datasets that exist and hold images, crops that fit them, models and artifacts that
exist.

Every problem names the spec field (``teacher.train.labeled.root``) so the client can fix it; the
API turns a ``SpecError`` into a 422.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from core.configs import DataSource, TrainSettings
from core.confine import PathNotAllowedError, confine
from core.errors import SelfTrainError
from core.plan import RunSpec, SpecError, TrainStage
from core.weights import weights_files


def resolve_path(value: str, roots: Sequence[Path], field: str) -> str:
    """The absolute, link-free form of ``value`` if it lies inside one of ``roots``
    (core.confine.confine; relative to the first root, no ``..``, no link out of the roots).

    Raises:
        SpecError: The path is outside the roots or uses ``..``, named by ``field``.
    """
    try:
        return str(confine(value, roots))
    except PathNotAllowedError as exc:
        raise SpecError([(field, f"{value!r} {exc.problem}")]) from exc


def resolve_spec_paths(spec: RunSpec, roots: Sequence[Path]) -> RunSpec:
    """A copy of ``spec`` with every path resolved inside ``roots`` (see ``resolve_path``).

    Raises:
        SpecError: Listing every path that is refused.
    """
    data = spec.model_dump(exclude_unset=True)
    problems: list[tuple[str, str]] = []

    def fix(container: dict | list, key: str | int, field: str) -> None:
        value = container[key]  # type: ignore[index]
        if value is None:
            return
        try:
            container[key] = resolve_path(value, roots, field)  # type: ignore[index]
        except SpecError as exc:
            problems.extend(exc.problems)

    if "output" in data:
        fix(data, "output", "output")
    for name in ("teacher", "student", "finetune"):
        stage = data.get(name)
        if not stage:
            continue
        if "checkpoint" in stage:
            fix(stage, "checkpoint", f"{name}.checkpoint")
        train = stage.get("train") or {}
        for key in ("labeled", "val"):
            if train.get(key):
                _fix_source(fix, train[key], f"{name}.train.{key}")
        options = train.get("model_options") or {}
        for option, _ in weights_files(options):  # files, not names such as torchvision:...
            fix(options, option, f"{name}.train.model_options.{option}")
    label = data["label"]
    for i, source in enumerate(label.get("sources", [])):
        _fix_source(fix, source, f"label.sources.{i}")
    for i in range(len(label.get("stores", []))):
        fix(label["stores"], i, f"label.stores.{i}")
    for i, source in enumerate(label.get("audit", [])):
        _fix_source(fix, source, f"label.audit.{i}")
    for name, source in ((data.get("evaluation") or {}).get("tests") or {}).items():
        _fix_source(fix, source, f"evaluation.tests.{name}")
    if problems:
        raise SpecError(problems)
    return RunSpec.model_validate(data)


def _fix_source(fix, source: dict, field: str) -> None:
    fix(source, "root", f"{field}.root")
    if source.get("subset_list"):
        # A relative list is read from the dataset root (as core.datasets.open_source does).
        if not Path(source["subset_list"]).is_absolute():
            source["subset_list"] = str(Path(source["root"]) / source["subset_list"])
        fix(source, "subset_list", f"{field}.subset_list")


def check_spec_data(spec: RunSpec) -> None:
    """Check what a run needs exists: datasets with images, crops that fit them, known models,
    given checkpoints and stores. Paths must be resolved already.

    Raises:
        SpecError: Listing every problem found.
    """
    problems: list[tuple[str, str]] = []
    for name in ("teacher", "student", "finetune"):
        stage: TrainStage | None = getattr(spec, name)
        if stage is None:
            continue
        if stage.checkpoint is not None:
            problems += _check_checkpoint(stage.checkpoint, f"{name}.checkpoint")
        if name == "teacher" and stage.checkpoint is not None and spec.student.train is not None:
            problems += _check_teacher_classes(stage.checkpoint, spec.student.train.labeled)
        if stage.train is not None:
            problems += _check_train(stage.train, f"{name}.train")
    for i, source in enumerate(spec.label.sources):
        problems += _check_source(source, f"label.sources.{i}")[1]
    for i, store in enumerate(spec.label.stores):
        problems += _check_store(store, f"label.stores.{i}", spec.student.train)
    labeled = [(f"label.audit.{i}", s) for i, s in enumerate(spec.label.audit)]
    if spec.evaluation is not None:
        labeled += [(f"evaluation.tests.{n}", s) for n, s in spec.evaluation.tests.items()]
    for field, source in labeled:
        problems += _check_labeled(source, field)
    if problems:
        raise SpecError(problems)


def _check_labeled(source: DataSource, field: str) -> list[tuple[str, str]]:
    """A source that is read for its labels (an audit or test set) has images, all labeled."""
    from core.datasets import open_source

    _, problems = _check_source(source, field)
    if problems:
        return problems
    try:
        if not open_source(source).is_labeled():
            return [(field, f"format {source.format!r} at {source.root} has no labels")]
    except SelfTrainError as exc:
        return [(field, str(exc))]
    return []


def _check_checkpoint(path: str, field: str) -> list[tuple[str, str]]:
    """A given checkpoint exists and loads."""
    from core.checkpoint import load_checkpoint

    if not Path(path).is_file():
        return [(field, f"{path} does not exist")]
    try:
        load_checkpoint(path)
    except SelfTrainError as exc:
        return [(field, str(exc))]
    return []


def _check_teacher_classes(path: str, labeled: DataSource) -> list[tuple[str, str]]:
    """A given teacher predicts the classes of the student's labeled data (its pseudo labels and
    the real labels train one model)."""
    from core.checkpoint import load_checkpoint
    from core.datasets import open_source
    from core.labels import LabelSpace

    try:
        classes = list(LabelSpace.from_dict(load_checkpoint(path)["label_space"]).names)
        space = open_source(labeled).label_space
    except SelfTrainError:
        return []  # reported on the checkpoint's or the dataset's own field
    if space is None or list(space.names) == classes:
        return []
    problem = f"{path} predicts {classes}, the student's labeled data has {list(space.names)}"
    return [("teacher.checkpoint", problem)]


def _check_train(train: TrainSettings, field: str) -> list[tuple[str, str]]:
    # The model and its options are checked by TrainSettings' validators (core.models.options).
    problems: list[tuple[str, str]] = []
    image_hw, found = _check_source(train.labeled, f"{field}.labeled")
    problems += found
    if train.val is not None:
        problems += _check_source(train.val, f"{field}.val")[1]
    if image_hw is not None:
        problems += _check_crops(
            train.schedule.crop_sizes, image_hw, f"{field}.schedule.crop_sizes"
        )
    return problems


def _check_source(
    source: DataSource, field: str
) -> tuple[tuple[int, int] | None, list[tuple[str, str]]]:
    """(size of the first image, problems) of a dataset; the size is None when it cannot be read."""
    from core.datasets import open_source
    from core.io import read_image

    if not Path(source.root).is_dir():
        return None, [(f"{field}.root", f"{source.root} does not exist or is not a folder")]
    if source.subset_list is not None and not Path(source.subset_list).is_file():
        return None, [(f"{field}.subset_list", f"{source.subset_list} does not exist")]
    try:
        dataset = open_source(source)
        if len(dataset) == 0:
            return None, [(field, f"no images in {source.root}")]
        image = read_image(dataset.items[0][0])
    except SelfTrainError as exc:
        return None, [(field, str(exc))]
    return (int(image.shape[0]), int(image.shape[1])), []


def _check_crops(
    crop_sizes: list[int], image_hw: tuple[int, int], field: str
) -> list[tuple[str, str]]:
    # The training job crops squares of these sides from the (randomly scaled) images and pads
    # what is missing; a crop beyond the images' short side is mostly padding, surely a mistake.
    height, width = image_hw
    too_big = [size for size in crop_sizes if size > min(image_hw)]
    if not too_big:
        return []
    return [(field, f"crop {max(too_big)} is larger than the images ({height}x{width})")]


def _check_store(store: str, field: str, student: TrainSettings | None) -> list[tuple[str, str]]:
    """A given store opens, and holds what the student reads from it: labeled images, centroids
    for centroid sampling, class probabilities for soft labels (else the run would fail after its
    teacher has trained)."""
    from core.store import LabelStore

    if not Path(store).is_dir():
        return [(field, f"{store} does not exist")]
    try:
        summary = LabelStore.open(store, read_only=True).summary()
    except SelfTrainError as exc:
        return [(field, str(exc))]
    if student is None or student.pseudo_per_real == 0:
        return []
    if summary["n_done"] == 0:
        return [(field, f"{store} holds no labeled images")]
    if student.centroid_sampling and not any(summary["centroids_per_class"].values()):
        area = summary["settings"].get("min_centroid_area")
        return [
            (
                field,
                f"{store} holds no centroids (labeled with min_centroid_area {area}); "
                "student.train.centroid_sampling draws crops around them: set it to false, or "
                "label again with a smaller min_centroid_area",
            )
        ]
    if student.soft_labels and summary["settings"].get("soft_stride") is None:
        return [
            (
                field,
                f"{store} keeps hard labels only; student.train.soft_labels reads class "
                "probabilities: label it with soft_labels: true",
            )
        ]
    return []


def run_folder(spec: RunSpec, run_id: str, workdir: Path, other_runs: Sequence[Path]) -> Path:
    """The folder a run writes into: ``<spec.output>/<run_id>``, or ``<workdir>/<run_id>/outputs``
    without ``output``. Named by the run's id, it is the run's own: no other run writes there.

    ``output`` (resolved already) must not overlap the service's workdir, a dataset the spec
    reads (a folder's images are listed recursively: outputs inside one would be labeled next
    time), or another run's folder.

    Raises:
        SpecError: ``output`` overlaps one of those, named.
    """
    if spec.output is None:
        return workdir / run_id / "outputs"
    parent = Path(spec.output)

    def overlaps(other: Path) -> bool:
        return parent == other or other in parent.parents or parent in other.parents

    if overlaps(workdir):
        raise SpecError([("output", f"{parent} overlaps the service's own folder {workdir}")])
    for field, root in _dataset_roots(spec):
        if overlaps(Path(root)):
            raise SpecError([("output", f"{parent} overlaps the dataset {root} ({field})")])
    for other in other_runs:
        if other == parent or other in parent.parents:
            raise SpecError([("output", f"{parent} is inside another run's folder {other}")])
    return parent / run_id


def _dataset_roots(spec: RunSpec) -> list[tuple[str, str]]:
    """``(field, root)`` of every dataset the spec reads."""
    roots = [(f"label.sources[{i}].root", s.root) for i, s in enumerate(spec.label.sources)]
    roots += [(f"label.audit[{i}].root", s.root) for i, s in enumerate(spec.label.audit)]
    if spec.evaluation is not None:
        roots += [(f"evaluation.tests.{n}.root", s.root) for n, s in spec.evaluation.tests.items()]
    for name in ("teacher", "student", "finetune"):
        stage = getattr(spec, name)
        train = None if stage is None else stage.train
        if train is None:
            continue
        roots.append((f"{name}.train.labeled.root", train.labeled.root))
        if train.val is not None:
            roots.append((f"{name}.train.val.root", train.val.root))
    return roots


def check_readable_path(value: str, roots: Sequence[Path], field: str) -> Path:
    """A path a request names to read (e.g. a checkpoint to predict with), resolved inside ``roots``
    and existing as a file.

    Raises:
        SpecError: Outside the roots, or not a file.
    """
    path = Path(resolve_path(value, roots, field))
    if not path.is_file():
        raise SpecError([(field, f"{value} does not exist")])
    return path
