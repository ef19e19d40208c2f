"""Family modules several plugins share (not a plugin: discovery skips this package).

``contrastive_args`` / ``contrastive``: the contrastive mix of CAD, LQCD and M3ID (plain data / torch).
"""
