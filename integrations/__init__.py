"""vllm-decoding-lab integration layer: entry point, plugin registry, catalog, CLI, serve/offline glue.

Importing this package is cheap (no torch, no vLLM): the vLLM entry point imports it in every process.
"""

__version__ = "0.1.0"
