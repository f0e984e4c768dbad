"""Energy accounting: spike counts -> synaptic operations -> energy estimate.

A spike of a neuron with fan-out ``F`` costs ``F`` synaptic accumulates (AC);
the layer that reads analog input (the first convolution, direct encoding)
costs multiply-accumulates (MAC). The equivalent ANN (same layers, ReLU, one
pass) costs one MAC per weight use.

Per-operation energies are Horowitz's 45 nm CMOS figures (M. Horowitz,
"Computing's energy problem (and what we can do about it)", ISSCC 2014),
the constants used throughout the SNN energy literature:

* 32-bit float MAC: 4.6 pJ (mult 3.7 pJ + add 0.9 pJ)
* 32-bit float AC (add): 0.9 pJ

Conventions, stated so numbers can be compared:

* Fan-out of a layer's neuron is the average over the layer:
  ``MACs of the consuming layer / units of the producing layer`` (exact for
  dense layers; border neurons of a convolution have fewer synapses).
* With direct encoding the first convolution's current is the same at every
  step, so its MACs are counted once per decision (``first_layer_steps=1``);
  set ``first_layer_steps=T`` for hardware that recomputes it every step.
* Read-out layers after the last spiking layer are driven by spikes, so they
  cost ACs like every other spiking synapse.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import numpy as np

from mtspark_jax.nn import networks

Array = jax.Array

E_MAC_PJ = 4.6
"""Energy of a 32-bit float multiply-accumulate, pJ (Horowitz 2014, 45 nm)."""
E_AC_PJ = 0.9
"""Energy of a 32-bit float accumulate, pJ (Horowitz 2014, 45 nm)."""


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """Static cost facts of one layer.

    Attributes:
      units: neurons of the layer (its output).
      macs: multiply-accumulates of the layer itself in one dense pass.
      fan_out: average synapses each of its neurons drives (0 for the last).
    """

    units: int
    macs: int
    fan_out: float


@dataclasses.dataclass(frozen=True)
class EnergyReport:
    """Energy of one forward pass, per sample.

    Attributes:
      sops: synaptic operations (spikes x fan-out) ``[B]``.
      first_layer_macs: MACs of the analog-input layer (scalar).
      snn_pj: estimated SNN energy ``[B]``, pJ.
      ann_macs: MACs of the equivalent ANN (scalar).
      ann_pj: estimated ANN energy, pJ (scalar).
      spike_rates: layer -> mean spikes per unit per step ``[B]``.
    """

    sops: np.ndarray
    first_layer_macs: int
    snn_pj: np.ndarray
    ann_macs: int
    ann_pj: float
    spike_rates: Mapping[str, np.ndarray]


def layer_costs(net, obs_shape: tuple[int, ...]) -> dict[str, LayerCost]:
    """Per-layer units, MACs and fan-out of a network, keyed like its spike counts.

    Args:
      net: a network from :mod:`mtspark_jax.nn.networks` (MTSparkADD, MTSparkAD,
        DSQN or DQN, or one of them inside
        :class:`~mtspark_jax.nn.networks.NoContext`); its ``convs``, ``padding``,
        ``hidden`` and ``num_actions`` attributes define the layers.
      obs_shape: ``[B, H, W, C]``.

    Returns:
      name -> :class:`LayerCost`. Conv layers are ``conv{i}``; dense spiking
      layers use the network's names (``a_fc``/``v_fc``, ``q_fc`` or ``fc``);
      read-outs are ``{head}_out``.
    """
    if len(obs_shape) != 4:
        raise ValueError(f"obs_shape must be [B, H, W, C], got {obs_shape}")
    while isinstance(net, networks.NoContext):  # the ablation wrapper has the wrapped net's layers
        net = net.net
    # Dense spiking layer -> (its read-out, read-out width).
    if isinstance(net, networks.MTSparkADD):
        heads = {"a_fc": ("a_out", net.num_actions), "v_fc": ("v_out", 1)}
    elif isinstance(net, networks.MTSparkAD):
        heads = {"q_fc": ("q_out", net.num_actions)}
    else:
        heads = {"fc": ("out", net.num_actions)}
    sizes = networks.layer_sizes(obs_shape, net.convs, net.padding, net.hidden, tuple(heads))
    result: dict[str, LayerCost] = {}
    conv_units, conv_macs = [], []
    c = obs_shape[3]
    for i, (f, k, _) in enumerate(net.convs):
        conv_units.append(sizes[f"conv{i}"])
        conv_macs.append(sizes[f"conv{i}"] * k * k * c)
        c = f
    flat = conv_units[-1] if conv_units else obs_shape[1] * obs_shape[2] * obs_shape[3]
    head_macs = flat * net.hidden
    for i, (units, macs) in enumerate(zip(conv_units, conv_macs)):
        consumer = conv_macs[i + 1] if i + 1 < len(conv_macs) else head_macs * len(heads)
        result[f"conv{i}"] = LayerCost(units, macs, consumer / units)
    for name, (out_name, width) in heads.items():
        result[name] = LayerCost(net.hidden, head_macs, float(width))
        result[out_name] = LayerCost(width, net.hidden * width, 0.0)
    return result


def estimate_energy(
    out: networks.NetworkOutput,
    net,
    obs_shape: tuple[int, ...],
    first_layer_steps: int = 1,
    e_mac_pj: float = E_MAC_PJ,
    e_ac_pj: float = E_AC_PJ,
) -> EnergyReport:
    """Energy per decision (or per image) from a network's spike counts.

    Args:
      out: the network's output; ``out.spike_counts[layer]`` is ``[B]``
        (spikes summed over T and units).
      net: the network that produced it.
      obs_shape: ``[B, H, W, C]`` of its input.
      first_layer_steps: how many times the analog first layer is counted.
      e_mac_pj, e_ac_pj: per-operation energies (pJ).

    Returns:
      :class:`EnergyReport`. For DQN (no spikes) ``sops`` is 0 and ``snn_pj``
      equals ``ann_pj``.
    """
    costs = layer_costs(net, obs_shape)
    ann_macs = int(sum(c.macs for c in costs.values()))
    batch = obs_shape[0]
    if not out.spike_counts:  # a non-spiking network
        zeros = np.zeros((batch,))
        ann_pj = ann_macs * e_mac_pj
        return EnergyReport(zeros, ann_macs, zeros + ann_pj, ann_macs, ann_pj, {})
    sops = np.zeros((batch,))
    for name, count in out.spike_counts.items():
        count = np.asarray(count, np.float64)
        if count.shape != (batch,):
            raise ValueError(f"spike count of {name} must be [{batch}], got {count.shape}")
        sops = sops + count * costs[name].fan_out
    first = int(costs["conv0"].macs) * first_layer_steps
    snn_pj = first * e_mac_pj + sops * e_ac_pj
    rates = {k: np.asarray(v) for k, v in out.spike_rates.items()}
    return EnergyReport(sops, first, snn_pj, ann_macs, ann_macs * e_mac_pj, rates)


def summarize(report: EnergyReport) -> dict[str, float]:
    """Batch means as plain floats, for logs and tables (energies in uJ)."""
    summary = {
        "energy/sops": float(np.mean(report.sops)),
        "energy/snn_uJ": float(np.mean(report.snn_pj)) * 1e-6,
        "energy/ann_uJ": report.ann_pj * 1e-6,
        "energy/ann_over_snn": report.ann_pj / float(np.mean(report.snn_pj)),
    }
    for name, rate in report.spike_rates.items():
        summary[f"spike_rate/{name}"] = float(np.mean(rate))
    return summary


def per_example_summary(net, example_shape: tuple[int, ...], mean_counts: Mapping[str, float]) -> dict[str, float]:
    """:func:`summarize` of one mean example, from its mean spike counts per layer.

    Args:
      net: the network (as for :func:`layer_costs`).
      example_shape: ``(H, W, C)`` of one input.
      mean_counts: layer -> spikes per example, summed over T and the layer's units.

    Returns:
      ``spike_rate/<layer>`` (spikes per unit per step) and the ``energy/*`` keys.
    """
    shape = (1,) + tuple(example_shape)
    costs = layer_costs(net, shape)
    while isinstance(net, networks.NoContext):
        net = net.net
    steps = getattr(net, "time_steps", 1)
    counts = {k: np.array([float(v)]) for k, v in mean_counts.items()}
    rates = {k: c / (steps * costs[k].units) for k, c in counts.items()}
    out = networks.NetworkOutput(q=np.zeros((1, 1)), spike_counts=counts, spike_rates=rates)
    return summarize(estimate_energy(out, net, shape))
