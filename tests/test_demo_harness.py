"""``declab demo`` without engines: panel discovery, grouping of jobs into engines, and the table / picture / numbers
the harness and each flagship panel make from job outputs. (``make demo`` runs the engines.)"""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from declab.integrations import demo, registry
from declab.integrations.sdk.demo import DemoPanel, DemoRow, EngineJob, EngineProfile

FLAGSHIPS = {"momentum", "cad", "lqcd", "asap", "token_recycling"}


def _panel(name: str, *profiles: EngineProfile, summarize=None) -> DemoPanel:
    jobs = tuple(EngineJob(f"job{i}", p, "json:dumps") for i, p in enumerate(profiles))
    return DemoPanel(name=name, jobs=jobs, summarize=summarize or (lambda outputs: {"n": len(outputs)}),
                     draw=lambda ax, numbers: ax.bar([0], [numbers["n"]]),
                     row=lambda numbers: DemoRow("jobs", "0", str(numbers["n"])))


def test_discovery_finds_every_flagship_panel_and_their_functions_resolve():
    panels = {p.name: p for p in demo.discover_panels()}
    assert FLAGSHIPS <= set(panels)
    for panel in panels.values():
        for job in panel.jobs:
            module, _, attr = job.function.partition(":")
            assert callable(getattr(importlib.import_module(module), attr)), job.function
            for plugin in job.profile.plugins:
                registry.get_spec(plugin)  # a selectable plugin name


def test_the_flagships_need_three_engines_logits_plugins_share_one():
    plans = demo.plan_engines([p for p in demo.discover_panels() if p.name in FLAGSHIPS])
    by_label = {p.label: p for p in plans}
    assert len(plans) == 3
    logits = next(p for p in plans if "momentum" in p.profile.plugins)
    assert set(logits.profile.plugins) == {"momentum", "cad", "lqcd", "asap", "gcd"}
    assert not logits.profile.engine_kwargs
    assert {panel for panel, _ in logits.jobs} == {"momentum", "cad", "lqcd", "asap"}
    vanilla = by_label["vanilla"]
    assert vanilla.env()["DECLAB_PLUGINS"] is None  # unset in the child: nothing selected
    tr = by_label["token_recycling"]
    assert tr.profile.engine_kwargs["speculative_config"]["method"] == "custom_class"
    for plan in plans:
        assert plan.env()["VLLM_CPU_KVCACHE_SPACE"]  # small engines on a shared machine


def test_grouping_merges_plugin_profiles_of_equal_settings_only():
    a, b = EngineProfile(plugins=("x",)), EngineProfile(plugins=("y", "x"))
    spec = EngineProfile(plugins=("z",), engine_kwargs={"speculative_config": {"method": "ngram"}})
    envd = EngineProfile(plugins=("x",), env={"SOME_SETTING": "1"})
    plans = demo.plan_engines([_panel("p1", a, EngineProfile()), _panel("p2", b, spec, envd, EngineProfile())])
    assert [p.profile.plugins for p in plans] == [("x", "y"), (), ("z",), ("x",)]
    assert [len(p.jobs) for p in plans] == [2, 2, 1, 1]  # the two vanilla jobs share the vanilla engine
    assert plans[3].env()["SOME_SETTING"] == "1"


def test_discovery_loads_panels_and_rejects_a_wrong_one(tmp_path, monkeypatch):
    root = tmp_path / "fakeplugins"
    for sub in ("with_demo", "without_demo", "bad_demo"):
        (root / sub).mkdir(parents=True)
        (root / sub / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "module.py").write_text("")
    (root / "with_demo" / "demo.py").write_text(textwrap.dedent("""
        from declab.integrations.sdk.demo import DemoPanel
        PANEL = DemoPanel(name="with_demo", jobs=(), summarize=dict, draw=print, row=print)
    """))
    (root / "bad_demo" / "demo.py").write_text("PANEL = 'not a panel'\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(TypeError, match="bad_demo.demo.PANEL"):
        demo.discover_panels(["fakeplugins.with_demo.demo", "fakeplugins.bad_demo.demo"])
    (root / "bad_demo" / "demo.py").unlink()
    for name in [m for m in sys.modules if m.startswith("fakeplugins.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    assert [p.name for p in demo.discover_panels(["fakeplugins.with_demo.demo"])] == ["with_demo"]


def test_unknown_panel_is_a_value_error_naming_the_option():
    panels = [_panel("a", EngineProfile()), _panel("b", EngineProfile())]
    assert [p.name for p in demo.select_panels(panels, "b")] == ["b"]
    with pytest.raises(ValueError, match="--panels.*nope"):
        demo.select_panels(panels, "a,nope")


def test_failed_panels_are_reported_and_the_rest_is_drawn(tmp_path):
    def boom(outputs):
        raise RuntimeError("bad numbers")

    panels = [_panel("good", EngineProfile()), _panel("engine_died", EngineProfile()),
              _panel("bad_summary", EngineProfile(), summarize=boom)]
    outputs = {(p.name, "job0"): {"result": {}} for p in panels}
    numbers = demo.summarize_panels(panels, outputs, {"engine_died": "engine vanilla failed: exit 1"})
    assert numbers["good"] == {"n": 1}
    assert "engine vanilla failed" in numbers["engine_died"]["error"]
    assert "bad numbers" in numbers["bad_summary"]["error"]
    table = demo.format_table(panels, numbers)
    assert table.splitlines()[2].split() == ["good", "jobs", "0", "1"]
    assert table.count("FAILED") == 2
    demo.plot(panels, numbers, tmp_path / "demo.png", "title", "notes")
    assert (tmp_path / "demo.png").stat().st_size > 10_000


# Each flagship panel on hand-made job outputs: numbers, table row and drawing (pure code, no engine).


def _numbers(name: str, outputs: dict) -> dict:
    panel = next(p for p in demo.discover_panels() if p.name == name)
    numbers = panel.summarize(outputs)
    assert isinstance(panel.row(numbers), DemoRow)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    panel.draw(ax, numbers)
    plt.close(fig)
    return numbers


def test_momentum_panel_numbers():
    loop, fresh = [1, 2] * 8, list(range(16))
    n = len(importlib.import_module("declab.plugins.momentum.demo").prompts())
    out = {"greedy": {"token_ids": [loop] * n, "texts": ["x"] * n},
           "momentum": {"token_ids": [fresh] * n, "texts": ["y"] * n}}
    numbers = _numbers("momentum", {"batch": {"result": out}})
    assert numbers["greedy"]["loop_share"] == 1.0 and numbers["momentum"]["rep_4"] == 0.0


@pytest.mark.parametrize("name,wanted", [("cad", "context_answer"), ("lqcd", "true_answer")])
def test_contrastive_panel_numbers(name, wanted):
    mod = importlib.import_module(f"declab.plugins.{name}.demo")
    items = mod.DEMO.items()
    unwanted = mod.DEMO.answers[1][0]
    out = {"plain": [f" {it[unwanted]}\n" for it in items], name: [f" {it[wanted]}\nmore" for it in items]}
    numbers = _numbers(name, {"answers": {"result": out}})
    assert numbers["shares"]["plain"][unwanted] == 1.0
    assert numbers["shares"][name][wanted] == 1.0 and numbers["shares"][name]["other"] == 0.0


def test_asap_panel_numbers():
    exact = {"0": 0.9, "1": 0.1}
    out = {"grammar_name": "g", "prompt": "p", "grammar": "root ::= ...", "exact": exact, "gcd_exact": {"0": 0.5, "1": 0.5},
           "samples": {"gcd": {"0": 0.5, "1": 0.5}, "asap": {"0": 0.9, "1": 0.1}}, "n": 10}
    numbers = _numbers("asap", {"samples": {"result": out}})
    assert numbers["distance_to_exact"]["gcd"]["tv"] == pytest.approx(0.4)
    assert numbers["distance_to_exact"]["asap"]["tv"] == pytest.approx(0.0)


def test_token_recycling_panel_numbers():
    vanilla = {"token_ids": [[1, 2, 3, 4], [5, 6, 7, 8]], "wall_s": 1.0}
    tr = {"token_ids": [[1, 2, 3, 4], [5, 6, 7, 9]], "wall_s": 2.0}
    counters = {"num_drafts": 2, "num_draft_tokens": 160, "num_accepted_tokens": 4}
    numbers = _numbers("token_recycling", {"vanilla": {"result": vanilla, "spec_metrics": {}},
                                           "token_recycling": {"result": tr, "spec_metrics": counters}})
    assert numbers["identical"] == 1
    assert numbers["tokens_per_forward"]["token_recycling"] == pytest.approx(8 / 4)
    assert numbers["mean_accepted_length"] == pytest.approx(3.0)
