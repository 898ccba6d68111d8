"""Training and evaluation of binary heads (``bne train``, ``bne eval``): research code, kept out
of the runtime path. Nothing under ``bne`` or ``bne.encoder`` imports this package; only the two
commands do.

* :mod:`.config` - :class:`TrainConfig`, every training hyper-parameter in one dataclass;
* :mod:`.losses` - contrastive (InfoNCE), CoSENT and distillation losses on tanh codes;
* :mod:`.data` - the data folder (``--data DIR`` / ``$BNE_DATA``) and its STS / BEIR / pair readers;
* :mod:`.features` - cached backbone features;
* :mod:`.recipes` - head-only training and full fine-tuning (one optimiser / scheduler setup);
* :mod:`.train` - ``bne train``; :mod:`.evaluate` - ``bne eval``.
"""
