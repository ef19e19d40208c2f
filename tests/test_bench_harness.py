"""The bench harness: discovery of plugin benchmarks, ``declab bench spec``'s proposer configurations from the specs,
the one child protocol and its process-group kill, the one report writer. No engine."""

from __future__ import annotations

import argparse
import re
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import text_outside_identifiers

from declab.integrations import bench, bench_spec, registry
from declab.integrations.sdk.bench import ChildFailed, ChildTimeout, call_in_child, report_json, write_report


def test_declab_bench_finds_generic_and_plugin_benchmarks():
    found = bench.benches()
    assert set(found) == {"overhead", "plugin", "spec", "verify-cost", "draft-agreement", "degeneration", "spec-tree",
                          "contrastive", "diverse-beam", "grammar", "ead", "attention", "contrastive-search", "superposed", "lol",
                          "spectr-grid"}
    for name, (entry, plugin) in found.items():
        if plugin is None:
            assert entry.module.startswith("declab.integrations."), name
        else:  # a plugin's benchmark lives in its own folder
            assert entry.module.startswith(registry.package_of(plugin) + "."), (name, entry.module)


def test_grammar_benchmark_implements_paper_35():
    entry, plugin = bench.benches()["grammar"]
    assert entry.paper == 35 and plugin == "asap"


def test_bench_harness_modules_name_no_plugin():
    """integrations/ reaches plugins through discovery only: no bench module there names one."""
    from pathlib import Path

    import declab.integrations as integrations

    names = [n for n in registry.all_specs()]
    folder = Path(integrations.__path__[0])
    for path in [*folder.glob("bench*.py"), folder / "engine_run.py", folder / "sdk" / "bench.py"]:
        # Strings and comments only (a variable such as ``cfg`` names no plugin); whole words: "ead" is in "read".
        text = "\n".join(t for _, t in text_outside_identifiers(path)).lower()
        hits = [n for n in names if re.search(rf"\b{re.escape(n)}\b", text)]
        assert not hits, (path.name, hits)


def _spec_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench_spec.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_bench_spec_configurations_come_from_the_proposer_specs():
    proposers = bench_spec.proposer_configs()
    declared = {name: (spec.name, cfg) for spec in registry.all_specs().values() if spec.proposer
                for name, cfg in spec.proposer.bench_configs.items()}
    assert {n: c.plugin for n, c in proposers.items()} == {n: p for n, (p, _) in declared.items()}
    args = _spec_args()
    assert args.configs.split(",") == [*bench_spec.BUILTIN_CONFIGS, *declared]
    for name, c in proposers.items():
        spec = registry.get_spec(c.plugin)
        kw = bench_spec.proposer_engine_kwargs(c, 5, bench_spec.proposer_settings(args))
        assert kw["speculative_config"] == {"method": "custom_class", "model": spec.proposer.proposer,
                                            "num_speculative_tokens": 5}
        if spec.settings:
            assert kw["additional_config"] == {"declab": {c.plugin: dict(c.bench.settings)}}


def test_bench_spec_settings_merge_under_each_configuration():
    proposers = bench_spec.proposer_configs()
    name, c = next((n, c) for n, c in proposers.items() if c.bench.settings and c.alias)
    key, value = next(iter(c.bench.settings.items()))
    other = next(p for p in registry.get_spec(c.plugin).settings if p.name != key)
    given = {other.name: other.default}
    for argv in (["--settings", f"{c.plugin}={json.dumps(given)}"], [f"--{c.alias}-config", json.dumps(given)]):
        settings = bench_spec.proposer_settings(_spec_args(*argv))
        kw = bench_spec.proposer_engine_kwargs(c, 5, settings)
        assert kw["additional_config"]["declab"][c.plugin] == {**given, key: value}, argv
    with pytest.raises(SystemExit, match="no_such_setting"):
        bench_spec.proposer_engine_kwargs(c, 5, {c.plugin: {"no_such_setting": 1}})
    with pytest.raises(SystemExit, match="not a plugin with proposer configurations"):
        bench_spec.proposer_settings(_spec_args("--settings", 'nope={"a": 1}'))


def test_bench_spec_draft_model_configuration(tmp_path, monkeypatch):
    """vLLM's draft_model: its engine arguments, the default draft (env, then the shared fixture), the K grid, and
    the unavailable case with its reason."""
    from declab.integrations import bench_spec_draft as draft
    from declab.integrations.models import default_draft_model
    from declab.integrations.sdk.draft_settings import DRAFT_MODEL_ENV

    assert "draft_model" in bench_spec.BUILTIN_CONFIGS
    args = _spec_args("--draft-model", "/d", "--draft-ks", "1,3")
    assert args.draft_model == "/d" and draft.parse_ks(args.draft_ks) == [1, 3]
    assert draft.parse_ks(_spec_args().draft_ks) == list(draft.DEFAULT_DRAFT_KS)
    with pytest.raises(SystemExit, match="--draft-ks"):
        draft.parse_ks("0,2")
    assert draft.draft_spec("/d", 3) == {"method": "draft_model", "model": "/d", "num_speculative_tokens": 3}
    # Sampling: the draft samples and hands vLLM its probabilities (standard speculative sampling).
    assert draft.draft_spec("/d", 3, 1.0) == {"method": "draft_model", "model": "/d", "num_speculative_tokens": 3,
                                              "draft_sample_method": "probabilistic"}
    assert "--draft-model" in draft.draft_availability(None)["reason"]
    assert "no config.json" in draft.draft_availability(str(tmp_path))["reason"]
    (tmp_path / "config.json").write_text("{}")
    assert draft.draft_availability(str(tmp_path)) == {"available": True, "path": str(tmp_path),
                                                      "name": tmp_path.name}
    monkeypatch.setenv(DRAFT_MODEL_ENV, str(tmp_path))
    assert default_draft_model() == str(tmp_path)
    monkeypatch.delenv(DRAFT_MODEL_ENV)
    monkeypatch.setenv("DECLAB_SHARED", str(tmp_path))  # a shared folder without the fixture
    assert default_draft_model() is None
    (tmp_path / "fixtures" / "draft-5m").mkdir(parents=True)
    (tmp_path / "fixtures" / "draft-5m" / "config.json").write_text("{}")
    assert default_draft_model() == str(tmp_path / "fixtures" / "draft-5m")
    rows = [{"k": k, "tokens_per_forward": 1 + k / 10, "tokens_per_s": 100 - k} for k in (1, 4)]
    line = draft.sweep_summary({"prompts": 2, "results": rows, "chosen": rows[0], "best_by_tokens_per_forward": rows[1]})
    assert "chosen K1" in line and "best tokens/forward K4" in line


def test_child_call_returns_the_targets_result():
    assert call_in_child("operator:neg", 3, timeout=60) == -3


def test_child_failure_carries_the_error_lines():
    with pytest.raises(ChildFailed, match="JSONDecodeError"):
        call_in_child("json:loads", "not json", timeout=60)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_nothing_a_child_started_outlives_the_call(tmp_path):
    """A grandchild left running by the child (like vLLM's engine core) is killed with the child's process group."""
    pid_file = tmp_path / "pid"
    assert call_in_child("os:system", f"sleep 300 & echo $! > {pid_file}", timeout=60) == 0
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_child_past_its_timeout_is_killed_with_its_group(tmp_path):
    pid_file = tmp_path / "pid"
    t0 = time.monotonic()
    with pytest.raises(ChildTimeout):
        call_in_child("os:system", f"sleep 300 & echo $! > {pid_file}; wait", timeout=3)
    assert time.monotonic() - t0 < 30
    assert not _alive(int(pid_file.read_text()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupting_declab_bench_kills_the_running_child(tmp_path, sig):
    """Ctrl-C (KeyboardInterrupt) or SIGTERM (SystemExit) to ``declab bench``: the child's group goes with it."""
    pid_file = tmp_path / "pid"
    code = ("import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from declab.integrations import bench; from declab.integrations.sdk.bench import call_in_child; "
            "bench._exit_on_termination(); "
            f"call_in_child('os:system', 'sleep 300 & echo $! > {pid_file}; wait', timeout=600)")
    parent = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    parent.send_signal(sig)
    code = parent.wait(timeout=30)
    assert code != 0 and (sig != signal.SIGTERM or code == 128 + signal.SIGTERM)
    assert not _alive(grandchild)


def test_write_report_records_provenance(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["declab", "bench", "overhead", "--prompts", "2"])
    jpath, ppath = write_report({"benchmark": "x"}, tmp_path, "x", lambda report, path: path.write_bytes(b"png"),
                                load_at_start=[0.5, 0.25, 0.125])
    report = json.loads(jpath.read_text())
    prov = report["provenance"]
    assert prov["command"] == "declab bench overhead --prompts 2"
    assert prov["vllm"] and prov["date"] and prov["machine"]["cpus"] == os.cpu_count()
    assert prov["machine"]["load_avg_at_start"] == [0.5, 0.25, 0.125]
    assert len(prov["machine"]["load_avg_at_end"]) == 3
    assert ppath.read_bytes() == b"png"


def test_report_json_is_the_same_value_with_one_record_per_line():
    rows = [{"id": str(i), "vanilla/batch1": {"tokens": 64, "identical": True}} for i in range(40)]
    report = {"benchmark": "spec", "nested": {"deep": {"list": list(range(50)), "empty": [], "none": None}},
              "short": [1, 2.5, "x"], "per_prompt": rows, "few_rows": rows[:3]}
    text = report_json(report)
    assert json.loads(text) == report
    lines = text.splitlines()
    assert sum(line.strip().startswith('{"id":') for line in lines) == 40 + 3  # 40 inline, 3 each on one line
    assert '"short": [1, 2.5, "x"]' in text
    assert max(len(line) for line in lines) < 120
    # A long list of plain values fills lines instead of one value per line.
    assert sum(line.strip().rstrip(",").replace(", ", "").isdigit() for line in lines) == 2


def test_bench_sdk_imports_no_torch_or_vllm():
    code = ("import sys; import declab.integrations.sdk.bench, declab.integrations.bench; "
            "print(sorted(m for m in ('torch', 'vllm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_per_prompt_entries_are_lists_in_the_declared_field_order():
    items = [{"id": "a", "group": "code", "prompt_tokens": 5}, {"id": "b", "group": "code", "prompt_tokens": 7}]
    phase = {"name": "batch16", "token_ids": [[1, 2, 3], [4, 5]], "request_metrics": [None, None]}
    drafted = {"name": "batch16", "token_ids": [[1, 2, 3], [4, 6]],
               "request_metrics": [{"histogram": [1, 0, 2]}, {"histogram": [3]}]}  # 2 drafts accepting 2 tokens
    recs = bench_spec.per_prompt(items, {"vanilla": {"phases": [phase]}, "ngram": {"phases": [drafted]}})
    assert bench_spec.PER_PROMPT_FIELDS == ("tokens", "accepted", "drafts", "identical")
    assert recs[0] == {"id": "a", "group": "code", "prompt_tokens": 5, "vanilla/batch16": [3, None, None, True],
                       "ngram/batch16": [3, 4, 3, True]}
    assert recs[1]["ngram/batch16"] == [2, 0, 3, False]


def test_equal_draft_compute_reads_the_fixed_k_curve_at_each_proposers_draft_tokens():
    from declab.integrations.bench_spec_draft import equal_draft_compute

    def cfg(tpf, drafted, rows):
        return {"phases": {"batch16": {"groups": {"all": {"tokens_per_forward": tpf, "num_drafts": 10,
                                                            "num_draft_tokens": 99}},
                                       "proposer": {"stats": {"draft_forwards": 5, "drafted_tokens": drafted,
                                                              "draft_rows": rows}}}}}
    report = {"draft_model_sweep": {"same_prompts_as_phases": True, "results": [
        {"k": 1, "tokens_per_forward": 1.5}, {"k": 2, "tokens_per_forward": 1.8}, {"k": 4, "tokens_per_forward": 2.0}]},
        "configs": {"draft_model": {}, "ngram": {"phases": {"batch16": {"groups": {"all": {}}}}},
                    "adaptive": cfg(2.1, 30, 10), "short": cfg(1.6, 5, 10)}}
    out = equal_draft_compute(report)
    assert set(out["configs"]) == {"adaptive", "short"}  # not vLLM's own, not a proposer without a draft model
    adaptive = out["configs"]["adaptive"]  # 3 draft tokens per step: halfway between K=2 and K=4
    assert adaptive["fixed_k_tokens_per_forward_at_equal_draft"] == pytest.approx(1.9)
    assert adaptive["ratio"] == pytest.approx(2.1 / 1.9) and adaptive["best_fixed_k"] == 4
    assert out["configs"]["short"]["fixed_k_tokens_per_forward_at_equal_draft"] == 1.5  # below K=1: K=1's value


def test_trees_vs_chain_compares_tree_proposers_with_the_draft_model_chain_per_phase():
    from declab.integrations.bench_spec_draft import trees_vs_chain

    def phase(tpf, stats):
        return {"groups": {"all": {"tokens_per_forward": tpf, "acceptance_per_position": [0.6, 0.3]}},
                "proposer": {"stats": stats}}

    tree_stats = {"tree_drafts": 8, "chain_drafts": 2, "tree_nodes": 96, "tree_depth_sum": 40, "tree_nodes_max": 12,
                  "draft_forwards": 30, "propose_calls": 10}
    report = {"draft_model_sweep": {"same_prompts_as_phases": True,
                                    "phases_k": {"k": 8, "criterion": "tokens_per_forward"},
                                    "best_by_tokens_per_forward": {"k": 8, "tokens_per_forward": 2.0}},
              "configs": {"draft_model": {"phases": {"batch16": phase(2.0, {}), "batch1": phase(2.5, {})}},
                          "pearl": {"phases": {"batch16": phase(1.6, {"draft_forwards": 3})}},
                          "rsd": {"phases": {"batch16": phase(3.0, tree_stats), "batch1": phase(3.0, tree_stats)}}}}
    out = trees_vs_chain(report)
    assert set(out["configs"]) == {"rsd"} and out["chain_k"] == 8  # chain proposers are not trees
    b16, b1 = out["configs"]["rsd"]["batch16"], out["configs"]["rsd"]["batch1"]
    assert b16["ratio_over_chain"] == pytest.approx(1.5) and b1["ratio_over_chain"] == pytest.approx(1.2)
    assert b16["ratio_over_sweep_best"] == pytest.approx(1.5) and "ratio_over_sweep_best" not in b1
    assert b16["mean_tree_nodes"] == 12 and b16["mean_tree_depth"] == 5 and b16["tree_share_of_drafts"] == 0.8
    assert b16["draft_forwards_per_step"] == 3 and b16["acceptance_by_depth"] == [0.6, 0.3]


def test_command_line_names_the_console_script_and_package_modules():
    """A report's ``provenance.command`` is what a user types again: ``declab ...`` for the CLI, ``python -m
    declab.<module> ...`` for a package module run with ``-m`` (sys.argv[0] is then its file), else argv as is."""
    from declab.integrations.sdk.bench import _PACKAGE_ROOT, command_line

    assert command_line(["/x/.venv/bin/declab", "bench", "spec", "--limit", "1"]) == "declab bench spec --limit 1"
    script = str(_PACKAGE_ROOT / "integrations" / "draft_training.py")
    assert command_line([script, "--seconds", "5"]) == "python -m declab.integrations.draft_training --seconds 5"
    assert command_line(["/tmp/probe.py", "--a b"]) == "/tmp/probe.py '--a b'"


def test_prompt_set_groups_keep_only_the_named_groups_and_refuse_unknown_names():
    """``declab bench spec --groups rag,summarization``: the long-context prompts only (RAPID's comparison); an
    unknown group is refused with the known ones listed, before any engine starts."""
    from declab.integrations.models import default_model
    from declab.integrations.prompts import load_prompt_set

    items, skipped, totals = load_prompt_set(default_model(), max_tokens=64, max_k=8, max_model_len=2048,
                                             limit=3, groups=["rag", "code"])
    assert [it["group"] for it in items] == ["rag"] * 3 + ["code"] * 3
    assert set(totals) == {"rag", "code"} and all(s["group"] in ("rag", "code") for s in skipped)
    with pytest.raises(ValueError, match=r"groups: \['nope'\] not among the prompt groups .*'summarization'"):
        load_prompt_set(default_model(), max_tokens=64, max_k=8, max_model_len=2048, groups=["rag", "nope"])
    assert _spec_args("--groups", "rag,summarization").groups == "rag,summarization"
    # Long code files only when named: the openings of the pinned vLLM package's long sources, cut at a line end.
    from declab.integrations.prompts import LONG_CODE_FILES, LONG_CODE_GROUP, LONG_CODE_MAX_TOKENS

    assert LONG_CODE_GROUP not in totals
    items, skipped, totals = load_prompt_set(default_model(), max_tokens=64, max_k=8, max_model_len=2048,
                                             groups=[LONG_CODE_GROUP])
    assert totals == {LONG_CODE_GROUP: LONG_CODE_FILES} and not skipped and len(items) == LONG_CODE_FILES
    assert len({it["id"] for it in items}) == LONG_CODE_FILES and all(it["id"].startswith("vllm/") for it in items)
    assert all(1_000 <= it["prompt_tokens"] <= LONG_CODE_MAX_TOKENS and it["text"].endswith("\n") for it in items)
