"""The 65-paper catalog: every paper of the reading list with its hook, status and the reason for that status.

``papers.json`` holds the classification of every paper (title as in ``../shared/seed``, hook, tier, reason). For a
paper that has a plugin, the plugin's ``PluginSpec`` is authoritative for status and reason; the JSON entry names the
plugin. ``declab list`` prints this table; ``declab list --json`` prints it as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from declab.integrations import registry

PAPERS_JSON = Path(__file__).with_name("papers.json")


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

    def as_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=1)
def catalog() -> tuple[CatalogEntry, ...]:
    raw = json.loads(PAPERS_JSON.read_text())
    specs = registry.all_specs()
    by_paper = {s.paper: s for s in specs.values()}
    # Papers that are benchmarks, built as `declab bench NAME` in a plugin's folder (BenchEntry.paper).
    bench_of = {e.paper: (s, e) for s in specs.values() for e in s.benches if e.paper}
    entries = []
    for item in raw:
        spec = by_paper.get(item["id"])
        if spec is not None:
            status, reason, hook = spec.status, spec.reason or spec.summary, spec.hook
            plugin, params = spec.name, [p.describe() for p in spec.params]
        elif item["id"] in bench_of:
            owner, entry = bench_of[item["id"]]
            status, hook, plugin, params = "working", registry.HOOK_BENCH, None, []
            reason = f"built as `declab bench {entry.name}` (plugin {owner.name}'s folder): {entry.help}"
        else:
            # Named plugins that are not implemented yet stay "planned".
            status, reason, hook = item["status"], item["reason"], item["hook"]
            plugin, params = None, []
        entries.append(
            CatalogEntry(
                id=item["id"],
                title=item["title"],
                short=item["short"],
                hook=hook,
                tier=item["tier"],
                status=status,
                plugin=plugin,
                reason=reason,
                params=params,
            )
        )
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
    return "\n".join(lines)
