"""The choices a GAN offers, without torch: the models (:mod:`cci_core.generate.gan`) and the request checks
(:mod:`cci_core.generate.settings`) read the same definition."""

LOSSES = ("hinge", "ns")                   # "ns": non-saturating
D_CONDITIONS = ("concat", "projection")    # how a conditional discriminator sees the cluster id
