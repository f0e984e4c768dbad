"""mtspark_jax: multi-task spiking reinforcement learning (MTSpark) in JAX.

The package is laid out by architecture: ``mtspark_jax.nn`` (neurons,
dendrites, networks, energy), ``mtspark_jax.rl`` (environments, replay, the
learner, the training step, the host runner, MinAtar and Atari sweeps),
``mtspark_jax.vision`` (image data, classification, image sweeps, permuted
MNIST), and the shared pieces at the top (``checkpoint``, ``config_flags``,
``sharding``, ``sweeps``: members and result tables of every sweep,
``xla_options``, ``init_jit``: initialisation compiled cheaply on the CPU).

Short names for notebooks::

    import mtspark_jax as mj
    net = mj.MTSparkADD()                       # Q-network, see mtspark_jax.nn.networks
    variables = mj.init_network(net, key, (8, 84, 84, 4))
    out = net.apply(variables, frames_uint8, task_ids)   # out.q [8, 18]

Neurons (time-major ``[T, ...]``): ``mj.lif``, ``mj.if_neuron``, ``mj.lif_step``,
``mj.if_step``, ``mj.neuron_unroll``, ``mj.leaky_readout``; spike with a
surrogate: ``mj.spike(x, "atan")``; surrogates: ``mj.SURROGATES``.
Image classification: ``mj.SpikingClassifier`` (data in ``mtspark_jax.vision.data``,
training in ``mtspark_jax.vision.classification``; TFDS is imported only when data is
prepared or read).
Dendrites: ``mj.per_neuron_gate``, ``mj.layer_shared_gate``, ``mj.kwta``,
``mj.DendriticGate``.
Permuted MNIST, continual (tasks only the context tells apart):
``mj.DendriticSpikingMLP``, ``mj.PermutedConfig``, ``mj.task_permutations``,
``mj.permute_images``, ``mj.run_continual`` (see ``mtspark_jax.vision.permuted``).
"""

from mtspark_jax.nn import energy
from mtspark_jax.nn.dendrites import (
    DendriticGate,
    kwta,
    layer_shared_gate,
    per_neuron_gate,
    select_segment,
)
from mtspark_jax.nn.networks import (
    DQN,
    DSQN,
    IMAGE_CONVS,
    NATURE_CONVS,
    NETWORKS,
    MTSparkAD,
    MTSparkADD,
    NetworkOutput,
    SpikingClassifier,
    SpikingTrunk,
    init_network,
    make_network,
    prepare_inputs,
)
from mtspark_jax.vision.permuted import (
    DendriticSpikingMLP,
    PermutedConfig,
    layer_activity,
    permute_images,
    permuted_splits,
    run_continual,
    task_permutations,
    usage_overlap,
)
from mtspark_jax.nn.spiking import (
    DEFAULT_ALPHA,
    SURROGATES,
    NeuronConfig,
    NeuronTrace,
    atan_grad,
    decode_time,
    fast_sigmoid_grad,
    identity_readout,
    if_neuron,
    if_step,
    leaky_membrane,
    leaky_readout,
    lif,
    lif_step,
    neuron_step,
    neuron_unroll,
    sigmoid_grad,
    spike,
)

__version__ = "0.1.0"
