"""Checking a model's name and options without building it, so that a run, config or job that names
a model it cannot build is refused where it enters (a 422, one line), not after a teacher has
trained: option names the factory does not take, ``output_stride`` values the heads do not
support, weight names that do not exist or do not fit the backbone, smp architectures and encoders
the installed smp lacks, and extras that are not installed.

Weights given as a file path are not opened here: a path is checked where it is used (the service
confines it to the data roots, the job opens it).
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable

from core.weights import PREFIX, TORCHVISION_FILES, is_weights_name

# The ResNet each model builds (its torchvision and timm weights have this name).
BACKBONES = {
    "deeplabv3plus_resnet50": "resnet50",
    "deeplabv3plus_resnet101": "resnet101",
    "deeplabv3plus_resnext50": "resnext50_32x4d",
    "pspnet_resnet101": "resnet101",
}
# The options that name pretrained weights (a file, or a name of core.weights).
WEIGHT_OPTIONS = ("backbone_weights", "encoder_weights")
# The output strides the heads of the ResNet-based models support (core.models.blocks).
OUTPUT_STRIDES = (8, 16)
SMP_EXTRA = "pip install -e '.[smp]'"


def factory_options(factory: Callable[..., object]) -> list[str]:
    """The keyword options a model factory takes besides ``num_classes``."""
    return [p for p in inspect.signature(factory).parameters if p != "num_classes"]


Problem = tuple[str, str]


def model_problems(
    name: object, options: object, factories: dict[str, Callable[..., object]]
) -> list[Problem]:
    """Every problem with building the model ``name`` with ``options`` (empty: it can be built),
    as ``(field, message)``: the field is ``model`` or ``model_options.<option>``.

    Args:
        name: The model's name.
        options: Its keyword options besides ``num_classes``.
        factories: The known models by name (core.models.MODELS).
    """
    if name not in factories:
        return [("model", f"unknown model {name!r}; known: {', '.join(sorted(factories))}")]
    if not isinstance(options, dict):
        return [("model_options", f"expected a mapping, got {type(options).__name__}")]
    takes = factory_options(factories[name])
    problems = [
        (
            f"model_options.{option}",
            f"model {name!r} takes no option {option!r}; it takes: {', '.join(takes) or 'none'}",
        )
        for option in sorted(set(options) - set(takes), key=str)
    ]
    if "output_stride" in options:
        problems += _stride_problems(options["output_stride"])
    if name == "smp":
        problems += _smp_problems(options)
    backbone = BACKBONES.get(str(name))
    if name == "smp" and isinstance(options.get("encoder", "resnet34"), str):
        backbone = options.get("encoder", "resnet34").removeprefix("tu-")
    for option in WEIGHT_OPTIONS:
        if options.get(option) is not None and option in takes:
            problems += _weights_problems(option, options[option], backbone)
    return problems


def _stride_problems(stride: object) -> list[Problem]:
    if isinstance(stride, bool) or not isinstance(stride, int) or stride not in OUTPUT_STRIDES:
        choices = " or ".join(str(s) for s in OUTPUT_STRIDES)
        return [("model_options.output_stride", f"must be the number {choices}, got {stride!r}")]
    return []


def _smp_problems(options: dict) -> list[Problem]:
    if importlib.util.find_spec("segmentation_models_pytorch") is None:
        missing = f"'smp' needs segmentation_models_pytorch, which is not installed: {SMP_EXTRA}"
        return [("model", missing)]
    from core.models.smp import smp_architectures, smp_encoders

    problems = []
    arch, encoder = options.get("arch", "Unet"), options.get("encoder", "resnet34")
    if not isinstance(arch, str) or arch not in smp_architectures():
        known = ", ".join(smp_architectures())
        problem = f"smp has no architecture {arch!r}; it has: {known}"
        problems.append(("model_options.arch", problem))
    if not isinstance(encoder, str):
        problems.append(("model_options.encoder", f"expected a name, got {encoder!r}"))
    elif encoder.startswith("tu-"):
        import timm

        if not timm.is_model(encoder[3:]):
            problems.append(("model_options.encoder", f"timm has no model {encoder[3:]!r}"))
    elif encoder not in smp_encoders():
        problems.append(
            (
                "model_options.encoder",
                f"smp has no encoder {encoder!r} (`selftrain models --json` lists them, or "
                "tu-<any timm model>)",
            )
        )
    return problems


def _weights_problems(option: str, value: object, backbone: str | None) -> list[Problem]:
    """A weight name that exists and fits ``backbone`` (the ResNet, or the smp encoder); a file
    path passes (checked where it is opened)."""
    field = f"model_options.{option}"
    if not isinstance(value, str) or not value:
        return [(field, f"expected a file or a weights name, got {value!r}")]
    if not is_weights_name(value):
        return []
    name = value.split(":", 1)[1]
    if value.startswith(PREFIX):
        if name not in TORCHVISION_FILES:
            known = ", ".join(PREFIX + k for k in TORCHVISION_FILES)
            return [(field, f"no torchvision weights {value!r}; known: {known}")]
    else:
        problem = _timm_name_problem(name)
        if problem is not None:
            return [(field, f"{value!r}: {problem}")]
    model = name.split(".", 1)[0]
    if backbone is not None and model != backbone:
        return [(field, f"{value!r} are weights of a {model}; the model's backbone is {backbone}")]
    return []


def _timm_name_problem(name: str) -> str | None:
    """Why ``name`` (``<model>.<tag>``) is not weights timm publishes, or None."""
    model, _, tag = name.partition(".")
    if not model or not tag or "/" in name or "\\" in name or ".." in name:
        return "expected timm:<model>.<tag>, e.g. timm:resnet50.a1_in1k"
    if importlib.util.find_spec("timm") is None:
        return f"timm weights need timm, which is not installed: {SMP_EXTRA}"
    import timm

    if name not in timm.list_pretrained(name):
        return "timm publishes no such weights (`timm.list_pretrained()` lists them)"
    return None
