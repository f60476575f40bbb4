"""The network: VGG19's weights (:mod:`nst_ext.model.weights`), its feature extractor
(:mod:`nst_ext.model.vgg`) and the placement of its layers on devices (:mod:`nst_ext.model.network`).
It stands on :mod:`nst_ext.io` and below."""
