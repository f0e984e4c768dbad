"""The reinforcement-learning path: environments (``envs``: EnvPool Atari,
``minatar``: gymnax MinAtar), the replay buffer (``replay``), the double
dueling DQN learner (``learner``), task schedules (``schedules``), the pure
training step and its scan (``training``), greedy evaluation (``evaluation``),
the host loop with logging and checkpoints (``runner``), seeds of a MinAtar
run vmapped (``minatar_sweep``) and many agents sharing one EnvPool
(``atari_sweep``)."""
