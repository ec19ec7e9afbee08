"""pglab: the policy-gradient family (REINFORCE → PPO → GRPO/GSPO) as swappable Lightning + Hydra parts."""

__version__ = "0.1.0"
