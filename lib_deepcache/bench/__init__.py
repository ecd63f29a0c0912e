"""The benchmark and its tools: speed against the FLOP limit, fidelity on a trained fixture, FLOP
figures, seeded UNet architectures and the sampling harness the tests use too.

``python -m lib_deepcache.bench`` runs it (:mod:`.cli`). Nothing here is imported by the
engine or the host adapters.
"""
