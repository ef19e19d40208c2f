"""vLLM 0.32 adapter: SpecTr as a ``custom_class`` speculative proposer drafting k i.i.d. chains as one tree.

Usage, with ``DECLAB_PLUGINS`` including ``spectr``::

    speculative_config={"method": "custom_class", "model": "declab.plugins.spectr.SpecTrProposer",
                        "num_speculative_tokens": 48}           # k x length draft nodes
    additional_config={"declab": {"spectr": {"drafts": 6, "length": 8}}}

Per step the SDK's ``TreeDraftProposer`` draws each request's k chains with ``core.KSequentialDraftTree``, one
batched draft forward per chain position for all chains of all requests, and the tree-verification seam verifies
them in one target forward. Requests the seam cannot verify get the draft's greedy chain.
"""

from __future__ import annotations

from declab.integrations.sdk.tree_drafting import TreeDraftProposer
from declab.plugins.spectr.core import KSequentialDraftTree
from declab.plugins.spectr.spec import SPEC


class SpecTrProposer(TreeDraftProposer):
    spec = SPEC
    selected_as = "SpecTr as the speculative proposer"

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        self.drafts, self.length = int(self.settings["drafts"]), int(self.settings["length"])
        self.stats.update({"drafts": self.drafts, "length": self.length})

    def chain_length(self) -> int:
        return min(self.k, self.length)

    def grower(self, root, budget, temperature, generator, verified_greedily):
        # A greedy request's chains share their agreeing prefixes (see core): repeats cost no verification.
        return KSequentialDraftTree(root, budget, self.drafts, self.length, temperature, generator,
                                    merge=verified_greedily)
