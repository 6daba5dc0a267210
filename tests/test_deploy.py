"""Offline checks of deploy/: every manifest parses, has what its kind needs, and names entry
points and config files that exist in the repository and validate against the jobs' configs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from core.configs import LabelJobConfig, TrainJobConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
JOB_CONFIGS = {
    "label.py": LabelJobConfig,
    "train.py": TrainJobConfig,
    "student.py": TrainJobConfig,
    "teacher.py": TrainJobConfig,
}


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _manifests() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted((DEPLOY / "kuberay").glob("*.yaml")) for d in _documents(p)]


def _check_entrypoint(entrypoint: str) -> None:
    """`python jobs/x.py --config deploy/configs/x.yaml`: both files exist, the config validates."""
    argv = shlex.split(entrypoint)
    assert argv[0] == "python", entrypoint
    script = ROOT / argv[1]
    assert script.is_file(), f"{entrypoint}: {argv[1]} is not in the repository"
    config = ROOT / argv[argv.index("--config") + 1]
    assert config.is_file(), f"{entrypoint}: config {config.relative_to(ROOT)} is missing"
    load_config(config, JOB_CONFIGS[script.name])


def _ray_pod_specs(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [group["template"]["spec"] for group in groups]


def test_every_manifest_has_api_version_kind_and_name():
    manifests = _manifests()
    kinds = sorted(doc["kind"] for _, doc in manifests)
    assert kinds == sorted(
        ["RayCluster", "PersistentVolumeClaim", "RayJob", "RayJob", "Deployment", "Service"]
    )
    for path, doc in manifests:
        assert doc["apiVersion"], path
        assert re.fullmatch(r"[a-z0-9-]+", doc["metadata"]["name"]), path


@pytest.mark.parametrize("job", ["label", "student"])
def test_rayjob_runs_a_real_entrypoint_on_gpu_workers(job: str):
    (doc,) = _documents(DEPLOY / "kuberay" / f"rayjob-{job}.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    assert doc["spec"]["entrypoint"] == f"python jobs/{job}.py --config deploy/configs/{job}.yaml"
    _check_entrypoint(doc["spec"]["entrypoint"])
    workers = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    gpus = [
        c["resources"]["limits"]["nvidia.com/gpu"]
        for w in workers
        for c in w["template"]["spec"]["containers"]
    ]
    assert gpus and all(int(g) >= 1 for g in gpus)


def test_raycluster_head_takes_no_work_and_workers_have_gpus():
    (doc, pvc) = _documents(DEPLOY / "kuberay" / "raycluster.yaml")
    assert doc["kind"] == "RayCluster" and pvc["kind"] == "PersistentVolumeClaim"
    assert doc["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for spec in _ray_pod_specs(doc["spec"]):
        claims = [
            v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        ]
        assert claims == [pvc["metadata"]["name"]]
    worker = doc["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_every_image_is_the_project_image_built_by_the_dockerfile():
    images = set()
    for _, doc in _manifests():
        images |= set(re.findall(r"image: (\S+)", yaml.safe_dump(doc)))
    assert images == {"ghcr.io/selftrain/selftrain:latest"}


def test_dockerfile_copies_only_paths_that_exist():
    text = (DEPLOY / "Dockerfile").read_text()
    sources = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    flat = [s for group in sources for s in group]
    assert "core" in flat and "jobs" in flat and "services" in flat
    for source in flat:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"


def test_cluster_launcher_names_head_and_gpu_workers():
    (doc,) = _documents(DEPLOY / "cluster-launcher.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert key in doc, key
    assert doc["head_node_type"] in doc["available_node_types"]
    assert doc["available_node_types"]["head"]["resources"] == {"CPU": 0}
    assert any("ray start --head" in c for c in doc["head_start_ray_commands"])


def test_deploy_configs_validate():
    assert load_config(DEPLOY / "configs" / "teacher.yaml", TrainJobConfig).role == "teacher"
    student = load_config(DEPLOY / "configs" / "student.yaml", TrainJobConfig)
    assert student.pseudo_per_real == 7.0 and student.schedule.kind == "coarse2fine+"
    label = load_config(DEPLOY / "configs" / "label.yaml", LabelJobConfig)
    assert label.teacher_checkpoint == "/data/runs/cityscapes-teacher/best.pt"


def _token_env(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", []) if e["name"].startswith("RAY_AUTH")}


def test_every_ray_cluster_asks_for_a_token_and_the_control_plane_sends_it():
    for path, doc in _manifests():
        if doc["kind"] == "RayCluster":
            for pod in _ray_pod_specs(doc["spec"]):
                env = _token_env(pod["containers"][0])
                assert env["RAY_AUTH_MODE"]["value"] == "token", path
                secret = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
                assert secret == {"name": "selftrain-ray-auth", "key": "auth_token"}
        elif doc["kind"] == "RayJob":
            assert doc["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}, path
        elif doc["kind"] == "Deployment":
            env = _token_env(doc["spec"]["template"]["spec"]["containers"][0])
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            secret = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert secret["name"] == "selftrain-ray-auth"
