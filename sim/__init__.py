"""Closed loop: simulators (the demo world, gym-pusht), collecting corpora from them, evaluating a trained
world model by model-predictive control in them."""
