"""Engine-wide settings every draft-model proposer declares (plain data: no torch)."""

from declab.integrations.sdk.params import ParamSpec

DRAFT_MODEL_ENV = "DECLAB_DRAFT_MODEL"

DRAFT_MODEL_PARAM = ParamSpec(
    "draft_model", str, "", max_length=4096,
    doc=f"folder of the draft model (HF Llama sharing the target's tokenizer) or a known draft's name (draft-5m, "
        f"draft-5m-long); empty: ${DRAFT_MODEL_ENV}, else ../shared/fixtures/draft-5m beside the repository")


def greedy_draft_temperature_param(default: float) -> ParamSpec:
    """The draft-tree proposers' setting: the temperature greedy requests' trees are drawn at (sampled requests
    are drawn at their own temperature, the papers' draft distribution)."""
    return ParamSpec("greedy_draft_temperature", float, default, low=0.0, high=10.0,
                     doc="temperature the trees of greedy requests are drawn at (0: deterministic, the most likely "
                         "tokens); sampled requests draw at their own temperature")
