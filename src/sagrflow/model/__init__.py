"""The SA-GR Flow policy (DESIGN.md section 3).

    config = FrameworkConfig.from_dict(yaml_dict["framework"])
    policy = SAGRPolicy.from_config(config, action_normalizer, state_normalizer)
    out = policy(batch)                                   # per-sample loss terms + diagnostics
    total, terms = reduce_losses(out, weights)            # weights: {fm, dyn, geo, reg}
    policy.save(dir); policy = SAGRPolicy.load(dir)
    policy.predict_action([{"image": [...], "lang": "...", "state": ...}])

transformers is imported only when a backbone is built.
"""

from sagrflow.model.config import ActionModelConfig, BackboneConfig, FrameworkConfig
from sagrflow.model.losses import reduce_losses
from sagrflow.model.policy import SAGRPolicy

__all__ = ["ActionModelConfig", "BackboneConfig", "FrameworkConfig", "SAGRPolicy", "reduce_losses"]
