"""Engine-wide settings every draft-model proposer declares (plain data: no torch)."""

from declab.integrations.sdk.params import ParamSpec

DRAFT_MODEL_ENV = "DECLAB_DRAFT_MODEL"

DRAFT_MODEL_PARAM = ParamSpec(
    "draft_model", str, "", max_length=4096,
    doc=f"folder of the draft model (HF Llama sharing the target's tokenizer); empty: ${DRAFT_MODEL_ENV}, else "
        "../shared/fixtures/draft-5m beside the repository")
