"""vLLM 0.32 adapter: DySpec as a ``custom_class`` speculative proposer growing a dynamic draft tree.

Usage, with ``DECLAB_PLUGINS`` including ``dyspec``::

    speculative_config={"method": "custom_class", "model": "declab.plugins.dyspec.DySpecProposer",
                        "num_speculative_tokens": 48}           # the node budget
    additional_config={"declab": {"dyspec": {"per_round": 8, "max_depth": 12}}}

Per step the SDK's ``TreeDraftProposer`` grows each request's tree with ``core.DynamicTree`` (``per_round`` nodes
per batched draft forward, all requests together) and the tree-verification seam verifies it in one target forward.
Requests the seam cannot verify get the draft's greedy chain.
"""

from __future__ import annotations

from declab.integrations.sdk.tree_drafting import TreeDraftProposer
from declab.plugins.dyspec.core import DynamicTree
from declab.plugins.dyspec.spec import SPEC


class DySpecProposer(TreeDraftProposer):
    spec = SPEC
    selected_as = "DySpec as the speculative proposer"

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        self.per_round, self.max_depth = int(self.settings["per_round"]), int(self.settings["max_depth"])
        self.stats.update({"per_round": self.per_round, "max_depth": self.max_depth})

    def chain_length(self) -> int:
        return min(self.k, 8)

    def grower(self, root, budget, temperature, generator, verified_greedily):
        return DynamicTree(root, budget, self.per_round, self.max_depth, temperature, generator)
