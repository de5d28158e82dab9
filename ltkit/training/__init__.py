"""Training: the context a run trains in (:mod:`.engine`), checkpoints, the stage-one loop, packed
training, the procedures (stage one, two experts, stage two), checking a configuration
(:func:`.check.make_config`) and a whole run (:func:`.pipeline.run`).

Importing this package, :mod:`.check` or :mod:`.procedures` imports no torch (planning a grid needs
only the registries); the modules that train import it themselves.
"""
