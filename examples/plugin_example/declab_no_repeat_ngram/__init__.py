"""Example declab plugin: no-repeat n-gram blocking (``no_repeat_ngram_size`` of HF transformers, which vLLM lacks).

A template for new plugins: ``spec.py`` declares it (plain data), ``core.py`` holds the pure torch transform and
its naive reference. Nothing outside this folder names it: copy the folder into ``plugins/`` (discovered by
folder) or install this directory as a distribution (discovered through the ``declab.plugins`` entry-point group).
"""
