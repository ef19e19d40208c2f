import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from declab.integrations import registry
from declab.integrations.catalog import UNCOVERED_KEYS, catalog, coverage, format_markdown
from declab.integrations.cli import serve_command

REPO = Path(__file__).resolve().parent.parent


def test_catalog_lists_all_65_papers():
    entries = catalog()
    assert [e.id for e in entries] == list(range(1, 66))
    for e in entries:
        assert e.title and e.reason and e.status in registry.STATUSES


# Written by hand, not read from the specs: the catalog takes its statuses from the specs, so comparing the two
# proves nothing. Promoting or demoting a plugin is a deliberate edit of this table. plugin -> (paper, status).
EXPECTED_PLUGINS = {
    "m3id": (1, "partial"),
    "ead": (10, "partial"),  # lossy by design; the target still verifies every kept draft token, so no compute saved on CPU
    "pearl": (12, "partial"),  # the draft/verify overlap is projected, not realised (one process, drafter after target)
    "momentum": (15, "working"),
    "diverse_beam": (20, "working"),
    "token_recycling": (21, "partial"),
    "dyspec": (31, "partial"),  # greedy trees; sampled requests draft chains until the sampling tree verifier is merged
    "aded": (8, "partial"),  # no corpus (prompts observed instead); trees verified only for greedy on CPU
    "sjd": (34, "partial"),  # built for text-to-image; on text few stale drafts are accepted
    "swift": (49, "partial"),  # lossless and adaptive; its speed-up needs a GPU (projected from measured costs)
    "lqcd": (25, "working"),
    "contrastive_search": (27, "partial"),  # CPU only (the tree-verification seam patches vLLM's CPU attention)
    "lol": (29, "partial"),  # no truthfulness-refocused module; constants not from the (unpublished) code
    "superposed": (30, "partial"),  # n-gram tables from the standard library sources, not the paper's corpus
    "bench grammar": (35, "working"),  # a benchmark paper built in a plugin folder (asap's)
    "gear": (36, "partial"),  # packed KV pages save memory; on CPU the context is decoded before the dense kernel
    "rsd": (38, "partial"),  # greedy trees; the recursive rejection-sampling verifier is the tree seam's other listener
    "specdec_pp": (47, "working"),
    "cad": (53, "working"),
    "tidaldecode": (54, "partial"),  # sparse rows recomputed after the dense CPU kernel: no speed-up without one
    "extractive": (55, "partial"),
    "spectr": (56, "partial"),  # greedy trees; the k-sequential verifier is the tree seam's other listener
    "rapid": (58, "partial"),  # lossless variant only; lexical retrieval
    "asap": (65, "working"),
}


def test_every_plugin_is_in_the_catalog_with_its_expected_status():
    by_plugin = {e.plugin: (e.id, e.status) for e in catalog() if e.plugin}
    assert by_plugin == EXPECTED_PLUGINS
    listed = json.loads(subprocess.run([sys.executable, "-m", "declab.integrations.cli", "list", "--json"],
                                       capture_output=True, text=True, check=True).stdout)
    assert {i["plugin"]: (i["id"], i["status"]) for i in listed if i["plugin"]} == EXPECTED_PLUGINS
    for name, spec in registry.all_specs().items():
        if spec.status == "partial":
            assert spec.reason, f"{name} is partial without a reason"


def test_benchmark_papers_built_in_a_plugin_folder_are_working():
    entries = {e.id: e for e in catalog()}
    for spec in registry.all_specs().values():
        for bench in spec.benches:
            if bench.paper:
                assert entries[bench.paper].status == "working"
                assert f"declab bench {bench.name}" in entries[bench.paper].reason


def test_papers_json_holds_only_what_no_spec_says():
    raw = json.loads((REPO / "integrations" / "papers.json").read_text())
    covered = coverage()
    for item in raw:
        if item["id"] in covered:
            # Status, reason and hook of an implemented paper come from its spec (they went stale in the JSON).
            assert not set(UNCOVERED_KEYS) & set(item), f"paper {item['id']}: drop {UNCOVERED_KEYS} from papers.json"
        else:
            assert {"hook", "status", "reason"} <= set(item), f"paper {item['id']} needs hook, status and reason"
            assert item["status"] != "working", f"paper {item['id']} is working without a plugin"


def test_readme_plugin_table_is_generated_from_the_specs():
    readme = (REPO / "README.md").read_text()
    begin = readme.index("<!-- plugin-table")
    table = readme[readme.index("\n", begin) + 1 : readme.index("<!-- /plugin-table -->")]
    assert table.strip() == format_markdown().strip(), "README plugin table is stale: run `declab list --markdown`"


def test_declab_list_json_cli():
    out = subprocess.run([sys.executable, "-m", "declab.integrations.cli", "list", "--json"],
                         capture_output=True, text=True, check=True).stdout
    items = json.loads(out)
    assert sorted(i["id"] for i in items) == list(range(1, 66))
    for i in items:
        assert {"id", "title", "hook", "status", "plugin", "reason"} <= set(i)
    # A proposer plugin's entry carries the speculative_config a user passes to vLLM.
    proposers = {i["plugin"]: i["speculative_config"] for i in items if i["hook"] == "speculative-proposer"
                 and i["plugin"]}
    assert proposers and all(c["method"] == "custom_class" for c in proposers.values())
    for name, config in proposers.items():
        assert config["model"] == registry.get_spec(name).proposer.proposer


def test_declab_list_table_cli():
    out = subprocess.run([sys.executable, "-m", "declab.integrations.cli", "list"],
                         capture_output=True, text=True, check=True).stdout
    assert "Token Recycling" in out and "(total 65)" in out
    beyond = out.split("plugins beyond the reading list (paper 0):")[1]
    assert "cfg" in beyond and "working" in beyond and "gcd" not in beyond  # gcd is asap's baseline


def test_every_plugin_folder_is_packaged():
    setup_py = runpy.run_path(str(REPO / "setup.py"), run_name="declab_setup")
    packages, package_dir = setup_py["discover_packages"]()
    folders = {p.name for p in (REPO / "plugins").iterdir() if (p / "__init__.py").exists()}
    assert {f"declab.plugins.{f}" for f in folders} <= set(packages)
    assert set(registry.plugin_packages()) <= set(packages)
    # Nothing generic lands at the top of site-packages.
    assert all(p.startswith("declab.") for p in packages)
    assert package_dir["declab.plugins"] == "plugins"


def test_serve_command_selects_plugins_and_uses_api_server():
    serve = serve_command(None, "momentum", ["--port", "8123"])
    cmd, env = serve.cmd, serve.env
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert env["DECLAB_PLUGINS"] == "momentum"
    assert cmd[-2:] == ["--port", "8123"]
    with pytest.raises(ValueError, match="unknown plugin 'nope'"):
        serve_command(None, "nope", [])


def test_serve_cli_splits_vllm_args_at_double_dash(monkeypatch):
    from declab.integrations import cli

    seen = {}
    monkeypatch.setattr(cli.os, "execvpe", lambda exe, cmd, env: seen.update(cmd=cmd, env=env))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # "MODEL" is no folder: its config is not looked up on the hub
    cli.main(["serve", "MODEL", "--plugins", "momentum", "--", "--host", "127.0.0.1", "--port", "9"])
    assert seen["cmd"][3:] == ["--model", "MODEL", "--host", "127.0.0.1", "--port", "9"]
    assert seen["env"]["DECLAB_PLUGINS"] == "momentum"
    seen.clear()
    cli.main(["serve", "--plugins", "momentum", "--", "--port", "9"])
    assert "--dtype" in seen["cmd"] and seen["cmd"][-2:] == ["--port", "9"]


def test_every_bench_subcommand_parses():
    """A sub-benchmark that breaks the CLI parser (e.g. a duplicate option) would take `declab serve` down too."""
    import subprocess
    import sys

    from declab.integrations.bench import benches

    for kind in benches():
        proc = subprocess.run([sys.executable, "-m", "declab.integrations.cli", "bench", kind, "--help"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "usage" in proc.stdout, (kind, proc.stderr[-2000:])
        assert "unavailable" not in proc.stdout, (kind, proc.stdout)


def test_plugin_specs_are_plain_data():
    """Specs are read by the entry point, the CLI and front-end validation: loading them imports no torch/vLLM."""
    import subprocess
    import sys

    code = ("import sys; from declab.integrations import registry; registry.all_specs(); "
            "print(sorted(m for m in ('torch', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
