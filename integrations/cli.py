"""``declab`` command line: ``list``, ``serve``, ``bench``, ``demo``."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from dataclasses import dataclass, field


def _cmd_list(args: argparse.Namespace) -> int:
    from declab.integrations.catalog import catalog, format_markdown, format_table

    entries = catalog()
    if args.markdown:
        print(format_markdown())
    elif args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=1))
    else:
        print(format_table(entries, width=shutil.get_terminal_size((160, 40)).columns))
    return 0


# Flags that make the bundled 29M model serve sensibly on a CPU-only machine; only added when MODEL is omitted.
CPU_DEFAULT_SERVE_ARGS = ["--dtype", "float32", "--max-model-len", "2048", "--enforce-eager"]


@dataclass
class ServeCommand:
    """What ``declab serve`` runs: the command line, its environment, and lines saying what declab chose."""

    cmd: list[str]
    env: dict[str, str]
    notes: list[str] = field(default_factory=list)


def serve_command(model: str | None, plugins: str, vllm_args: list[str]) -> ServeCommand:
    """The command line and environment ``declab serve`` runs (separate for testing): the KV cache sized for the
    model unless the user chose (``serve_memory``); without ``model``, the bundled decoder-29m with CPU defaults."""
    from declab.integrations import lifetime, registry
    from declab.integrations.models import BUNDLED_MODEL
    from declab.integrations.serve_memory import kv_cache_for_serve

    registry.parse_selection(plugins)  # fail early on an unknown name
    served = model or str(BUNDLED_MODEL)  # the bundled copy carries a chat template (/v1/chat/completions works)
    args = [*(CPU_DEFAULT_SERVE_ARGS if model is None else []), *vllm_args]
    env = dict(os.environ)
    env[registry.PLUGINS_ENV] = plugins
    env[lifetime.ENV] = "1"  # EngineCore and Workers die with the API server, however it ends
    kv_flags, kv_note = kv_cache_for_serve(served, args, env)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", served, *kv_flags, *args]
    return ServeCommand(cmd, env, [kv_note])


def _cmd_serve(args: argparse.Namespace) -> int:
    serve = serve_command(args.model, args.plugins, args.vllm_args)
    for note in serve.notes:
        print(f"declab serve: {note}", file=sys.stderr)
    print(f"declab serve: {registry_env_line(serve.env)} {' '.join(serve.cmd)}", file=sys.stderr, flush=True)
    os.execvpe(serve.cmd[0], serve.cmd, serve.env)
    return 0  # pragma: no cover


def registry_env_line(env: dict[str, str]) -> str:
    return f"DECLAB_PLUGINS={env.get('DECLAB_PLUGINS', '')}"


def _cmd_bench(args: argparse.Namespace) -> int:
    from declab.integrations import bench

    return bench.main(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from declab.integrations import demo

    return demo.main(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="declab", description="Decoding-research plugins for vLLM 0.32")
    sub = p.add_subparsers(dest="command", required=True)

    pl = sub.add_parser("list", help="print the 65-paper catalog")
    pl.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    pl.add_argument("--markdown", action="store_true", help="print the README's plugin table (from the specs)")
    pl.set_defaults(func=_cmd_list)

    ps = sub.add_parser(
        "serve",
        help="start vLLM's OpenAI-compatible server with plugins selected",
        description="declab serve [MODEL] --plugins a,b [-- any vllm serve args]. Without MODEL the bundled "
        "decoder-29m is served with CPU-friendly defaults.",
    )
    ps.add_argument("model", nargs="?", default=None)
    ps.add_argument("--plugins", default="", help="comma list of plugin names, or 'all' (sets DECLAB_PLUGINS)")
    ps.set_defaults(func=_cmd_serve)

    from declab.integrations import bench

    bench.add_parser(sub).set_defaults(func=_cmd_bench)

    pd = sub.add_parser("demo", help="the main job: each plugin's panel (plain vs plugin), on the bundled model")
    pd.add_argument("--model", default=None, help="model path (default: decoder-29m)")
    pd.add_argument("--out", default="demo-results", help="folder for the chart and JSON")
    pd.add_argument("--max-tokens", type=int, default=64, help="tokens per open-ended output (panels may use fewer)")
    pd.add_argument("--panels", default=None, help="comma list of panels to run (default: every plugin's demo)")
    pd.set_defaults(func=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after the first "--" goes to vLLM unchanged (`declab serve MODEL --plugins a -- --port 8000`).
    passthrough: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1 :]
    args = build_parser().parse_args(argv)
    if passthrough and args.command != "serve":
        raise SystemExit(f"declab {args.command}: unexpected arguments after '--': {passthrough}")
    args.vllm_args = passthrough
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
