"""The op layer, the house's floor: the compiled Gram and fused style-loss ops with their pure-PyTorch
fallback (:mod:`nst_ext.ops.dispatch`), their fake kernels and autograd (:mod:`nst_ext.ops.registrations`),
the reference that is their oracle (:mod:`nst_ext.ops.reference`) and the input checks both share
(:mod:`nst_ext.ops.checks`). It imports nothing of nst_ext but :mod:`nst_ext.errors`."""
