"""vLLM 0.32 adapter: RSD as a ``custom_class`` speculative proposer drafting trees with a draft model of its own.

Usage, with ``DECLAB_PLUGINS`` including ``rsd``::

    speculative_config={"method": "custom_class", "model": "declab.plugins.rsd.RSDProposer",
                        "num_speculative_tokens": 48}           # the tree's node budget
    additional_config={"declab": {"rsd": {"variant": "beam", "beam_width": 6, "beam_depth": 8}}}

Per step the SDK's ``TreeDraftProposer`` grows each request's tree with ``core.StochasticBeamTree`` (RSD-S, the
default) or ``core.GumbelTopKTree`` (RSD-C), one batched draft forward per tree level, and the tree-verification seam
verifies it in one target forward. Requests the seam cannot verify get the draft's greedy chain.
"""

from __future__ import annotations

from declab.integrations.sdk.tree_drafting import TreeDraftProposer
from declab.plugins.rsd.core import GumbelTopKTree, StochasticBeamTree, parse_branching
from declab.plugins.rsd.spec import SPEC


class RSDProposer(TreeDraftProposer):
    spec = SPEC
    selected_as = "RSD as the speculative proposer"

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        self.branching = parse_branching(self.settings["branching"])
        self.variant = self.settings["variant"]
        self.beam_width, self.beam_depth = int(self.settings["beam_width"]), int(self.settings["beam_depth"])
        self.stats.update({"variant": self.variant, "branching": list(self.branching),
                           "beam_width": self.beam_width, "beam_depth": self.beam_depth})

    def chain_length(self) -> int:
        return min(self.k, self.beam_depth if self.variant == "beam" else len(self.branching))

    def grower(self, root, budget, temperature, generator, verified_greedily):
        if self.variant == "beam":
            return StochasticBeamTree(root, budget, self.beam_width, self.beam_depth, temperature, generator)
        return GumbelTopKTree(root, budget, self.branching, temperature, generator)
