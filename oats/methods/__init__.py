"""OATS's own methods, one module each (the paper's baselines live in ``baselines/``).

Every module here is imported by :func:`oats.registry.discover` and registers its methods.
"""
