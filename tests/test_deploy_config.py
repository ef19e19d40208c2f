"""Every flag the deployment examples use exists in vLLM 0.32's `vllm serve` parser; every plugin name exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from declab.integrations import registry

DEPLOY = Path(__file__).resolve().parent.parent / "examples" / "deploy"


@pytest.fixture(scope="module")
def serve_flags() -> set[str]:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = make_arg_parser(FlexibleArgumentParser())
    return {opt for action in parser._actions for opt in action.option_strings}


def _k8s_docs(name: str = "k8s.yaml"):
    return list(yaml.safe_load_all((DEPLOY / name).read_text()))


def _all_k8s_docs():
    return [d for path in sorted(DEPLOY.glob("k8s*.yaml")) for d in _k8s_docs(path.name)]


def _serve_flags_in(script: str) -> list[str]:
    """The ``--flags`` of every ``vllm serve`` command in a shell script."""
    flags = []
    for part in script.split("vllm serve")[1:]:
        command = part.split("\n\n")[0].split(";;")[0]
        flags += [t.split("=")[0] for t in shlex.split(command.replace("\\\n", " "), comments=True)
                  if t.startswith("--")]
    return flags


def test_vllm_config_file_keys_are_serve_flags(serve_flags):
    configs = [yaml.safe_load(path.read_text()) for path in sorted(DEPLOY.glob("vllm-config*.yaml"))]
    configs += [yaml.safe_load(d["data"]["vllm-config.yaml"]) for d in _all_k8s_docs() if d["kind"] == "ConfigMap"]
    assert len(configs) >= 4
    for conf in configs:
        for key in conf:
            if key == "model":  # positional in `vllm serve`, also accepted as a config key
                continue
            assert f"--{key}" in serve_flags, f"--{key} is not a vLLM 0.32 serve flag"


def test_k8s_command_flags_and_plugins_exist(serve_flags):
    deployment = next(d for d in _k8s_docs() if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "vllm/vllm-openai:v0.32.0"
    script = " ".join(container["args"])
    flags = _serve_flags_in(script)
    assert flags, "no flags found in the serve command"
    for flag in flags:
        assert flag == "--config" or flag in serve_flags, flag
    assert re.search(r'vllm-decoding-lab\[gpu\]==\d', script)
    env = {e["name"]: e["value"] for e in container["env"]}
    registry.parse_selection(env["DECLAB_PLUGINS"])  # raises on an unknown name
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"


def test_multi_gpu_config_uses_vllm_tensor_and_data_parallelism():
    conf = yaml.safe_load((DEPLOY / "vllm-config-multigpu.yaml").read_text())
    assert conf["tensor-parallel-size"] > 1 and conf["data-parallel-size"] > 1


def test_multinode_ray_manifest_selects_the_plugins_in_every_pod(serve_flags):
    """LeaderWorkerSet: the leader starts the Ray head and ``vllm serve`` on the Ray backend, the worker joins it;
    both install the same declab and select valid plugins; the serve command's flags exist."""
    docs = _k8s_docs("k8s-multinode.yaml")
    config = yaml.safe_load(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["vllm-config.yaml"])
    assert config["distributed-executor-backend"] == "ray" and config["pipeline-parallel-size"] > 1
    template = next(d for d in docs if d["kind"] == "LeaderWorkerSet")["spec"]["leaderWorkerTemplate"]
    leader = template["leaderTemplate"]["spec"]["containers"][0]
    worker = template["workerTemplate"]["spec"]["containers"][0]
    scripts = {"leader": " ".join(leader["args"]), "worker": " ".join(worker["args"])}
    assert "ray start --head" in scripts["leader"] and "ray start --address=" in scripts["worker"]
    for flag in _serve_flags_in(scripts["leader"]):
        assert flag == "--config" or flag in serve_flags, flag
    pins = {re.search(r'vllm-decoding-lab\[gpu\]==[\d.]+', s)[0] for s in scripts.values()}
    assert len(pins) == 1, pins  # the same version on every node
    for container in (leader, worker):
        assert container["image"] == "vllm/vllm-openai:v0.32.0"
        env = {e["name"]: e["value"] for e in container["env"]}
        registry.parse_selection(env["DECLAB_PLUGINS"])
        assert container["resources"]["requests"]["nvidia.com/gpu"] == str(config["tensor-parallel-size"])


def test_multinode_data_parallel_script_flags_exist(serve_flags):
    script = (DEPLOY / "multinode-dp.sh").read_text()
    flags = _serve_flags_in(script)
    assert {"--headless", "--data-parallel-start-rank", "--data-parallel-address"} <= set(flags)
    for flag in flags:
        assert flag in serve_flags, flag
    registry.parse_selection(re.search(r'DECLAB_PLUGINS:-([\w,]+)', script)[1])
