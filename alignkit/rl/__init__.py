"""Online RL plumbing shared by `train/ppo.py` and `train/grpo.py`.

rollout.py (sample + score with the training code path) -> rewards.py (reward sources)
-> advantages.py (GAE, REINFORCE, RLOO, GRPO) -> experience.py (one batch of
experience) -> update.py (epochs x minibatches of the policy/value losses).
"""
