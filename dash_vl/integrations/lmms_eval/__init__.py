"""The lmms-eval plugin: the entry point (:mod:`.entry`) and the models (:mod:`.models`)."""
