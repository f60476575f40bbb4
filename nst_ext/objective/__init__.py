"""One stage's loss over the network (:class:`Objective`, in :mod:`nst_ext.objective.stage`): its terms
(:mod:`~nst_ext.objective.losses`, :mod:`~nst_ext.objective.masks`, :mod:`~nst_ext.objective.color`), its
inputs at each stage (:mod:`~nst_ext.objective.inputs`) and its evaluation, on the whole picture
(:mod:`~nst_ext.objective.whole`) or tile by tile for pictures too large for one pass
(:mod:`~nst_ext.objective.tiled`), behind one interface (:mod:`~nst_ext.objective.terms`)."""

from nst_ext.objective.stage import Objective, TemporalTarget
from nst_ext.objective.terms import TERMS

__all__ = ["Objective", "TERMS", "TemporalTarget"]
