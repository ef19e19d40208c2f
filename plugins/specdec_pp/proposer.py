"""vLLM 0.32 adapter: SpecDec++ as a ``custom_class`` speculative proposer with a draft model of its own.

Usage, with ``DECLAB_PLUGINS`` including ``specdec_pp``::

    speculative_config={"method": "custom_class", "model": "declab.plugins.specdec_pp.SpecDecPPProposer",
                        "num_speculative_tokens": 8}
    additional_config={"declab": {"specdec_pp": {"threshold": 0.7}}}

``num_speculative_tokens`` is the longest draft; each request's draft stops earlier when the head's predicted
probability that some token drafted so far is rejected, ``1 - prod p_accept``, exceeds ``threshold`` (the token
that crossed it is kept: the paper stops after it). Chains are verified by vLLM's rejection sampler.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from declab.integrations.sdk.draft_model import DraftOutput, load_folder_weights, weights_fingerprint
from declab.integrations.sdk.drafting import DraftModelProposer
from declab.plugins.specdec_pp.head import AcceptanceHead
from declab.plugins.specdec_pp.spec import SPEC

DEFAULT_HEAD = Path(__file__).with_name("acceptance_head.safetensors")
logger = logging.getLogger(__name__)


class SpecDecPPProposer(DraftModelProposer):
    spec = SPEC
    selected_as = "SpecDec++ as the speculative proposer"
    cut_drafts_at_max_tokens = True

    def __init__(self, vllm_config) -> None:
        super().__init__(vllm_config)
        head_path = self.settings["head"] or str(DEFAULT_HEAD)
        if not Path(head_path).is_file():
            raise ValueError(f"specdec_pp.head: no acceptance head at {head_path!r}")
        self.head = AcceptanceHead.load(head_path).eval()
        self._check_head_matches_draft(head_path)
        self.threshold = float(self.settings["threshold"])
        self._all_accepted: dict[str, float] = {}  # request -> prod p_accept of the tokens drafted this step
        self.stats.update({"threshold": self.threshold, "head": head_path, "stopped_by_head": 0})
        self.open_seams()

    def _check_head_matches_draft(self, head_path: str) -> None:
        """The head reads the draft's hidden states: refuse a head trained on another draft (its predictions would
        be miscalibrated; the output would stay lossless, the draft lengths would not be SpecDec++'s)."""
        trained_on = self.head.draft
        if trained_on is None:
            logger.warning("specdec_pp.head: %s records no draft; it cannot be checked against %s", head_path,
                           self.draft_model.path)
            return
        fingerprint = weights_fingerprint(load_folder_weights(self.draft_model.path))
        if fingerprint != trained_on.get("fingerprint"):
            raise ValueError(
                f"specdec_pp.head: {head_path} was trained on the draft {trained_on.get('name')!r} (fingerprint "
                f"{trained_on.get('fingerprint')}), not on draft_model {self.draft_model.path!r} (fingerprint "
                f"{fingerprint}); train a head for this draft with python -m declab.plugins.specdec_pp.train_head "
                "--draft DRAFT --head FILE --out FOLDER and set specdec_pp.head to FILE")

    def continue_drafting(self, req_ids: list[str], position: int, out: DraftOutput,
                          tokens: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            p_accept = self.head.accept_prob(out.hidden.float(), torch.softmax(out.logits, dim=-1)).tolist()
        go_on = []
        for req_id, p in zip(req_ids, p_accept):
            survive = (1.0 if position == 0 else self._all_accepted[req_id]) * p
            self._all_accepted[req_id] = survive
            go_on.append(1.0 - survive <= self.threshold)
        self.stats["stopped_by_head"] += go_on.count(False)
        return torch.tensor(go_on, dtype=torch.bool)

    def on_request_finish(self, req_id: str) -> None:
        super().on_request_finish(req_id)
        self._all_accepted.pop(req_id, None)
