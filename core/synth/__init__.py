"""Synthetic driving scenes with Cityscapes labels: the embedded data of the demo and the tests.

A scene is a street seen from a car: a pinhole camera at driver height looks down a road that runs
to a vanishing point, with sidewalks, facades, trees, poles, signs, traffic lights, vehicles, people
and riders placed in 3-D (meters: x to the right, y up, z ahead) and projected to the image. Things
are drawn far to near, so nearer things occlude farther ones, and every shape writes the picture
and the label map together.

The scenes are meant to be hard enough that a small model trained on a few of them stays clearly
imperfect: facades, vehicles, walls and sidewalks share colors, texture noise covers every surface,
sunlight casts shadows, and the rare classes (train, bus, truck, motorcycle, bicycle, rider) appear
in a minority of scenes and are small, while road, building, vegetation and sky take most pixels.

The two domains share the label semantics but not the look: ``source`` is a city by day (sun or
overcast); ``target`` is another city (brick and dark facades, other vehicle colors) at night, in
fog or in rain, so that a model trained on one meets a real domain shift on the other.

`write_synthetic_dataset` writes the Cityscapes layout, so every loader reads it as it reads
Cityscapes. docs/synth_source.png and docs/synth_target.png are `preview` pictures of scene 4 of
the source and scene 0 of the target domain written by ``write_synthetic_dataset(out, 5, domain)``.

The modules, by what they hold or draw:

- `render`: `generate_scene`, the order in which a scene is drawn, and the argument checks;
- `dataset`: `write_synthetic_dataset`, scenes as files in the Cityscapes layout;
- `classes`: the Cityscapes label ids the renderer writes;
- `palette`: the surface colors of each domain;
- `camera`, `canvas`, `geometry`: projection, the picture with its per-pixel buffers, and the
  world shapes that are projected onto it;
- `scene`: the state that every drawing function shares;
- `weather`: sky, weather and light, and the camera's response that finishes the picture;
- `street`: the ground, the houses and what stands in front of them, trees;
- `traffic`: vehicles, where they drive and park, and the hood of the camera's car;
- `people`: pedestrians, bicycles and motorcycles with their riders;
- `furniture`: lamps, signs and traffic lights, and what stands on sidewalks and crossings.
"""

from core.synth.classes import EGO_VEHICLE
from core.synth.dataset import write_synthetic_dataset
from core.synth.render import DOMAINS, check_size, generate_scene, preview

__all__ = [
    "DOMAINS",
    "EGO_VEHICLE",
    "check_size",
    "generate_scene",
    "preview",
    "write_synthetic_dataset",
]
