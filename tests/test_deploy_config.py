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


def _k8s_docs():
    return list(yaml.safe_load_all((DEPLOY / "k8s.yaml").read_text()))


def test_vllm_config_file_keys_are_serve_flags(serve_flags):
    configs = [yaml.safe_load((DEPLOY / "vllm-config.yaml").read_text())]
    configs += [yaml.safe_load(d["data"]["vllm-config.yaml"]) for d in _k8s_docs() if d["kind"] == "ConfigMap"]
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
    serve_part = script.split("vllm serve", 1)[1]
    flags = [t.split("=")[0] for t in shlex.split(serve_part) if t.startswith("--")]
    assert flags, "no flags found in the serve command"
    for flag in flags:
        assert flag == "--config" or flag in serve_flags, flag
    assert re.search(r'vllm-decoding-lab\[gpu\]==\d', script)
    env = {e["name"]: e["value"] for e in container["env"]}
    registry.parse_selection(env["DECLAB_PLUGINS"])  # raises on an unknown name
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
