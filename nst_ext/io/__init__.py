"""What is read and written: pictures (:mod:`nst_ext.io.images`, :mod:`nst_ext.io.encoders`), video
files (:mod:`nst_ext.io.video`), safe outputs (:mod:`nst_ext.io.outputs`), the records a picture carries
(:mod:`nst_ext.io.provenance`) and the per-machine algorithm cache (:mod:`nst_ext.io.algorithm_cache`).
It stands on :mod:`nst_ext.plan` and below."""
