"""The plan of a run, torch-free where it can be: the options (:mod:`nst_ext.plan.options`), VGG19's
layer geometry (:mod:`nst_ext.plan.layers`), sizes and free memory (:mod:`nst_ext.plan.budget`), the
memory levers and stage schedule (:mod:`nst_ext.plan.memory`), what VGG's layers keep and where
to cut them (:mod:`nst_ext.plan.activations`) and the tiles of a large picture
(:mod:`nst_ext.plan.tiles`). It stands on :mod:`nst_ext.ops` and :mod:`nst_ext.errors` only."""
