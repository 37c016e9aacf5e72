"""The coefficient beta of the KL-to-reference penalty: fixed, or adapted toward a target.

Adaptive control is Ziegler et al. 2019, "Fine-Tuning Language Models from Human
Preferences", section 2.2: after each batch with observed KL (nats per response),

    e = clip(KL / KL_target - 1, -0.2, 0.2),    beta <- beta * (1 + K_beta * e),  K_beta = n / horizon

where n is the number of responses in the batch, so beta moves slowly (horizon
10,000 responses in the paper) and reaches target-tracking over many batches.

Both controllers keep only beta as state (`state_dict` / `load_state_dict`, for checkpoints).
"""

from __future__ import annotations


class FixedKLController:
    """beta never changes."""

    def __init__(self, init_coef: float, target: float = 0.0, horizon: float = 10000):
        self.value = float(init_coef)

    def update(self, current_kl: float, num_responses: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """beta grows when the KL is above `target` and shrinks when below (Ziegler et al. 2019)."""

    def __init__(self, init_coef: float, target: float = 6.0, horizon: float = 10000):
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL control needs a positive target and horizon")
        self.value, self.target, self.horizon = float(init_coef), float(target), float(horizon)

    def update(self, current_kl: float, num_responses: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * num_responses / self.horizon
        return self.value


KL_CONTROLLERS = {"fixed": FixedKLController, "adaptive": AdaptiveKLController}
