"""Diverse Beam Search (Vijayakumar, Cogswell, Selvaraju, Sun, Lee, Crandall, Batra; arXiv 1610.02424; reading
list paper 20).

Beam search returns near-duplicate hypotheses. DBS splits the ``beam_width`` beams into ``num_groups`` groups of
``beam_width / num_groups`` and expands the groups in order at every time step: within a group it is plain beam
search, but a candidate of group ``g`` is ranked by its log-probability minus ``diversity_penalty`` times the
Hamming diversity term (how many beams of groups ``0..g-1`` chose the same token at this step). ``num_groups=1``
with ``diversity_penalty=0`` is exactly vLLM's ``LLM.beam_search``.

It runs at the integration level (``HOOK_SEARCH``), as a front-end loop of batched 1-token engine requests, like
vLLM's own beam search (which ignores logits processors and runs outside the engine). ``core.py`` is the pure
algorithm, ``search.py`` the adapters, ``spec.py`` the parameters.

Offline::

    from vllm import LLM
    from declab.plugins.diverse_beam.search import diverse_beam_search

    llm = LLM(model=...)
    results = diverse_beam_search(llm, ["def fibonacci(n):\\n    "], beam_width=4, num_groups=4,
                                  diversity_penalty=0.5, max_tokens=16)
    for beam in results[0]:  # best first
        print(beam.group, beam.cum_logprob, beam.text)

Over HTTP, against a server started with ``declab serve`` (any vLLM OpenAI-compatible server works)::

    from declab.plugins.diverse_beam.search import diverse_beam_search_http

    beams = diverse_beam_search_http("http://localhost:8000", "<served model name>", "def fibonacci(n):\\n    ",
                                     beam_width=4, num_groups=4, diversity_penalty=0.5, max_tokens=16)
"""
