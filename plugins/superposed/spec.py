"""Declaration of the Superposed Decoding plugin (plain data: no torch, no vLLM)."""

from declab.integrations.sdk import BenchEntry, LogitsHook, ParamSpec, PluginSpec

# What one superposed row cannot honour: the engine samples the row over a one-hot choice of the plugin, so
# penalties, biases, masks and grammars would act on placeholders; its tokens are not the completions' tokens, so
# their log-probabilities would describe nothing the client receives.
REFUSED_OPTIONS = ("presence_penalty", "frequency_penalty", "repetition_penalty", "min_tokens", "logit_bias",
                   "allowed_token_ids", "bad_words", "prompt_logprobs", "structured_outputs")

SPEC = PluginSpec(
    name="superposed",
    paper=30,
    status="partial",
    summary="Superposed Decoding: k drafts from ONE forward per step; the row's input is the probability-weighted "
    "mix of the drafts' newest token embeddings, the drafts grow by the top tokens of its distribution filtered by "
    "an interpolated n-gram model (built from the Python standard library sources), k completions per request (n=k)",
    reason="the n-gram tables come from the Python standard library sources (6 MB, code and docstrings), not the "
    "paper's web-scale corpus; completions arrive whole at the end (no streaming of partial drafts); the drafts are "
    "deterministic (the request's temperature / top-p do not apply)",
    logits=LogitsHook(
        row_processor="declab.plugins.superposed.processor:SuperposedProcessor",
        check_sampling="declab.plugins.superposed.processor:check_sampling",
        refused_options=REFUSED_OPTIONS,
        refused_reason="a superposed row is decoded over the plugin's one-hot choice and its own tokens are "
        "placeholders",
        input_embeddings=True,
        bundled_completions="k",
    ),
    params=(
        ParamSpec("k", int, default=3, low=2, high=16,
                  doc="number of drafts (completions); the request's n must equal it (vLLM returns n completions)"),
        ParamSpec("alpha", float, default=0.54, low=0.0, high=1.0,
                  doc="weight of the n-gram model: log score = (1 - alpha) log p_LM + alpha log p_ngram; reference "
                  "0.54; 0 = no n-gram filter"),
        ParamSpec("softmax_temperature", float, default=0.06, low=0.001, high=10.0,
                  doc="temperature of the softmax over the superposed logits (reference 0.06): lower = the drafts' "
                  "weights concentrate on the best draft"),
        ParamSpec("n_token_sample", int, default=9, low=1, high=256,
                  doc="candidate tokens taken from the distribution each step (reference 9; at least 2k are used)"),
        ParamSpec("penalty", float, default=200.0, low=0.0, high=10_000.0,
                  doc="log-score penalty of a draft none of whose candidates the n-gram model knows (reference 200)"),
        ParamSpec("ngram", bool, default=True,
                  doc="use the n-gram filter (false: rank the candidates by the model alone)"),
    ),
    benches=(
        BenchEntry(name="superposed", module="declab.plugins.superposed.bench",
                   help="Superposed Decoding vs k nucleus samples: forwards, perplexity under the model, "
                        "distinct-n / self-BLEU"),
    ),
)
