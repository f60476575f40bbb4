"""One stage's loss over the network (:class:`Objective`, in :mod:`nst_ext.objective.stage`), and
its evaluation tile by tile for pictures too large for one pass (:mod:`nst_ext.objective.tiled`)."""

from nst_ext.objective.stage import TERMS, Objective, TemporalTarget

__all__ = ["Objective", "TERMS", "TemporalTarget"]
