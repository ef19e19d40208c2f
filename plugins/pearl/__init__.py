"""PEARL (Liu, Wang, Li, Zhu, Zhang, Tang, Li, 2024; arXiv 2408.11850, ICLR 2025; reading list paper 12).

"PEARL: Parallel Speculative Decoding with Adaptive Draft Length". Draft and target run in parallel: *pre-verify*
has the target check the first draft token while the draft writes the rest of its window, *post-verify* has the
draft write the next window while the target verifies the current one. The draft length adapts by itself: one token
is verified after a rejection, whole windows while the drafts keep being accepted. ``core.py`` holds the per-request
schedule (pure Python) and the timeline projection; ``proposer.py`` runs it as a vLLM ``custom_class`` proposer.
"""

__all__ = ["PearlProposer"]


def __getattr__(name: str):
    if name == "PearlProposer":
        from declab.plugins.pearl.proposer import PearlProposer

        return PearlProposer
    raise AttributeError(name)
