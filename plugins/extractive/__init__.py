"""exact-extract: decoding for extractive question answering (paper 55 of the reading list).

"How Optimal is Greedy Decoding for Extractive Question Answering?" (Castel et al.). In extractive QA the answer
must be a contiguous span of the passage. Greedy decoding neither guarantees that the output is a span nor that it
is the most probable one; exact-extract finds the span ``s`` maximizing ``p(s) * p(EOS | s)`` under the model. This
plugin offers both: ``mode="greedy"`` constrains ordinary decoding to spans with a suffix automaton over the
passage's tokens (a logits processor), and ``mode="exact"`` runs a best-first branch-and-bound over the span trie
that returns the exact argmax span while scoring only a fraction of the spans (``core.best_span``, driven by a
search loop over engine requests). The pure algorithm lives in ``core.py``; the declaration in ``spec.py``.
"""
