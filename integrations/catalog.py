"""The 65-paper catalog: every paper of the reading list with its hook, status and the reason for that status.

Statuses come from what exists: a paper is covered by a plugin's ``PluginSpec`` (its status and reason) or by a
plugin's ``BenchEntry(paper=...)`` (a benchmark paper built as ``declab bench NAME``). ``papers.json`` holds only what
no spec says: every paper's title, short name and tier, and the hook, status and reason of papers nothing covers yet.
``declab list`` prints this table; ``--json`` as JSON; ``--markdown`` the README's plugin table.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from declab.integrations import registry

PAPERS_JSON = Path(__file__).with_name("papers.json")
# Keys papers.json may hold for a paper nothing covers yet; a covered paper has them from its spec.
UNCOVERED_KEYS = ("hook", "status", "reason", "plugin")


@dataclass(frozen=True)
class CatalogEntry:
    id: int
    title: str
    short: str
    hook: str
    tier: int
    status: str
    plugin: str | None
    reason: str
    params: list[dict]
    settings: list[dict]
    speculative_config: dict | None = None  # proposer plugins: what a user passes to vLLM

    def as_dict(self) -> dict:
        return asdict(self)


def coverage() -> dict[int, tuple[registry.PluginSpec, object | None]]:
    """paper -> (spec, bench entry or None) for every paper a plugin or a plugin's benchmark implements."""
    covered: dict[int, tuple[registry.PluginSpec, object | None]] = {}
    for spec in registry.all_specs().values():
        if spec.paper:
            covered[spec.paper] = (spec, None)
        for bench in spec.benches:
            if bench.paper:
                covered.setdefault(bench.paper, (spec, bench))
    return covered


@lru_cache(maxsize=1)
def catalog() -> tuple[CatalogEntry, ...]:
    raw = json.loads(PAPERS_JSON.read_text())
    covered = coverage()
    entries = []
    for item in raw:
        spec, bench = covered.get(item["id"], (None, None))
        spec_config = None
        if spec is None:
            status, reason, hook, plugin = item["status"], item["reason"], item["hook"], None
            params, settings = [], []
        elif bench is None:
            spec_config = spec.proposer.speculative_config() if spec.proposer else None
            status, reason, hook, plugin = spec.status, spec.reason or spec.summary, spec.hook, spec.name
            params, settings = [p.describe() for p in spec.params], [p.describe() for p in spec.settings]
        else:
            status, hook, plugin, params, settings = "working", registry.HOOK_BENCH, f"bench {bench.name}", [], []
            reason = f"built as `declab bench {bench.name}` (plugin {spec.name}'s folder): {bench.help}"
        entries.append(CatalogEntry(id=item["id"], title=item["title"], short=item["short"], hook=hook,
                                    tier=item["tier"], status=status, plugin=plugin, reason=reason, params=params,
                                    settings=settings, speculative_config=spec_config))
    return tuple(entries)


def format_table(entries: tuple[CatalogEntry, ...], width: int = 160) -> str:
    header = f"{'#':>2}  {'paper':<26} {'hook':<21} {'tier':<4} {'status':<15} {'plugin':<16} reason"
    lines = [header, "-" * min(width, 200)]
    for e in entries:
        reason_room = max(20, width - 92)
        reason = e.reason if len(e.reason) <= reason_room else e.reason[: reason_room - 1] + "…"
        lines.append(
            f"{e.id:>2}  {e.short[:26]:<26} {e.hook:<21} {e.tier:<4} {e.status:<15} {(e.plugin or '-'):<16} {reason}"
        )
    counts: dict[str, int] = {}
    for e in entries:
        counts[e.status] = counts.get(e.status, 0) + 1
    lines.append("")
    lines.append("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f"  (total {len(entries)})")
    beyond = beyond_the_list()
    if beyond:
        lines += ["", "plugins beyond the reading list (paper 0):"]
        lines += [f"    {s.name:<16} {s.hook:<21} {s.status:<15} {s.summary}"[: max(width, 80)] for s in beyond]
    return "\n".join(lines)


def beyond_the_list() -> list:
    """Plugin specs of methods not in the reading list (``paper == 0``) that are not some plugin's baseline."""
    return [s for s in registry.all_specs().values() if not s.paper and not s.baseline_of]


_HOOK_WORDS = {
    registry.HOOK_LOGITS: "logits processor (router)",
    registry.HOOK_PROPOSER: "speculative proposer (`custom_class`)",
    registry.HOOK_SEARCH: "search loop over engine requests",
    registry.HOOK_BENCH: "benchmark",
    registry.HOOK_ATTENTION: "attention backend (CPU_ATTN swapped)",
}


def format_markdown() -> str:
    """The README's plugin table, generated from the specs (``declab list --markdown``)."""
    titles = {e.id: e.short for e in catalog()}
    package_dirs = {name: registry.package_of(name).replace("declab.plugins.", "plugins/") + "/"
                    for name in registry.all_specs()}
    lines = ["| plugin | paper | hook | status | docs |", "|---|---|---|---|---|"]
    for name, spec in registry.all_specs().items():
        hook = _HOOK_WORDS[spec.hook]
        if spec.logits is not None and spec.logits.companions:
            hook += " + companion rows"
        if spec.logits is not None and spec.logits.input_embeddings:
            hook += " + row input embeddings"
        if spec.logits is not None and spec.logits.bundled_completions:
            hook += " + bundled completions"
        if spec.paper:
            paper = f"{spec.paper} {titles[spec.paper]}"
        else:
            paper = f"baseline of `{spec.baseline_of}`" if spec.baseline_of else "beyond the reading list"
        lines.append(f"| `{name}` | {paper} | {hook} | {spec.status} | `{package_dirs[name]}` |")
        for bench in spec.benches:
            if bench.paper:
                lines.append(f"| `declab bench {bench.name}` | {bench.paper} {titles[bench.paper]} | benchmark | "
                             f"working | `{package_dirs[name]}` |")
    return "\n".join(lines)
