"""MTSpark_ADD and DSQN written with SpikingJelly and with snnTorch (PyTorch).

Both follow our equations (docs/design.md section 1) as closely as their APIs allow:

* SpikingJelly: ``LIFNode(tau=2, decay_input=True, v_threshold=1, v_reset=0,
  surrogate=Sigmoid(alpha=4), detach_reset=False, step_mode='m')`` and
  ``IFNode`` with the same constants: the same equations as ours, firing at
  ``H >= v_th`` like ours.
* snnTorch: ``Leaky(beta=0.5, threshold=1, spike_grad=sigmoid(slope=4),
  reset_mechanism='zero', reset_delay=False)``; snnTorch charges
  ``U = beta U + I`` where we charge ``H = V + (X - V) / tau``, so the input
  current is scaled by ``1 / tau`` (exact for tau = 2); IF is ``beta = 1``
  without scaling. Remaining difference: snnTorch fires at ``U > thr`` (we
  fire at ``>=``), which only matters when a membrane lands exactly on 1.0.

Both are written the fast way their APIs allow, like ours: the first
convolution runs once on the frame (direct encoding), later convolutions and
linear layers run once on ``[T*B, ...]`` (SpikingJelly's multi-step layers do
this; for snnTorch the layers are applied to the merged tensor by hand), and
only the neurons step through time. The dendritic gate (per-neuron segments,
signed absolute maximum) and DSQN's leaky read-out are plain torch code in
both, as neither library has them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import ALPHA, NUM_ACTIONS, TAU, TIME_STEPS, V_TH

CONVS = ((32, 8, 4), (64, 4, 2), (64, 3, 1))


def _conv_from_flax(conv: nn.Conv2d, p) -> None:
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(p["kernel"].transpose(3, 2, 0, 1))))
        conv.bias.copy_(torch.from_numpy(p["bias"]))


def _linear_from_flax(lin: nn.Linear, p, chw_from_hwc: tuple[int, int, int] | None = None) -> None:
    k = p["kernel"]
    if chw_from_hwc is not None:  # our flatten is (h, w, c); torch's is (c, h, w)
        h, w, c = chw_from_hwc
        k = k.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(k.T)))
        lin.bias.copy_(torch.from_numpy(p["bias"]))


def dendritic_gate(segments: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """segments [units, s, d_c], context [B, d_c] -> sigmoid(signed abs-max) [B, units]."""
    act = torch.einsum("usd,bd->bus", segments, context)
    idx = act.abs().argmax(dim=-1, keepdim=True)
    return torch.sigmoid(act.gather(-1, idx).squeeze(-1))


class _Base(nn.Module):
    """Trunk shared by both libraries; ``lif``/``if_`` are per-library neuron runners."""

    def __init__(self, params, dsqn: bool):
        super().__init__()
        self.dsqn = dsqn
        t = params["trunk"]
        self.convs = nn.ModuleList(
            [nn.Conv2d(c_in, f, k, s) for c_in, (f, k, s) in zip((4, 32, 64), CONVS)]
        )
        for i, conv in enumerate(self.convs):
            _conv_from_flax(conv, t[f"conv{i}"])
        heads = ("fc",) if dsqn else ("a_fc", "v_fc")
        outs = {"fc": "out", "a_fc": "a_out", "v_fc": "v_out"}
        self.fc = nn.ModuleDict()
        self.out = nn.ModuleDict()
        self.segments = nn.ParameterDict()
        for h in heads:
            self.fc[h] = nn.Linear(3136, 512)
            _linear_from_flax(self.fc[h], params[h], (7, 7, 64))
            o = params[outs[h]]
            self.out[h] = nn.Linear(512, o["kernel"].shape[1])
            _linear_from_flax(self.out[h], o)
            if not dsqn:
                g = params[h.replace("_fc", "_gate")]
                self.segments[h] = nn.Parameter(torch.from_numpy(g["segments"].copy()))

    def trunk(self, x):
        """x [B, 4, 84, 84] float -> spikes [T, B, 3136] (flattened c, h, w)."""
        T = TIME_STEPS
        cur = self.convs[0](x)  # direct encoding: once
        s = self.lif(cur.unsqueeze(0).expand(T, *cur.shape), 0)
        for i in (1, 2):
            cur = self.convs[i](s.flatten(0, 1))
            s = self.lif(cur.view(T, -1, *cur.shape[1:]), i)
        return s.flatten(2)

    def forward(self, obs_u8, tasks):
        T = TIME_STEPS
        x = obs_u8.permute(0, 3, 1, 2).float() / 255.0
        feats = self.trunk(x)
        flat = feats.flatten(0, 1)
        if self.dsqn:
            cur = self.fc["fc"](flat).view(T, -1, 512)
            s = self.lif(cur, 3)
            cur = self.out["fc"](s.flatten(0, 1)).view(T, -1, NUM_ACTIONS)
            v = torch.zeros_like(cur[0])
            vs = []
            for t in range(T):  # non-spiking leaky read-out, Q = max over time
                v = v + (cur[t] - v) / TAU
                vs.append(v)
            return torch.stack(vs).amax(0)
        ctx = F.one_hot(tasks.long(), self.segments["a_fc"].shape[-1]).float()
        res = {}
        for j, h in enumerate(("a_fc", "v_fc")):
            gate = dendritic_gate(self.segments[h], ctx)
            cur = self.fc[h](flat).view(T, -1, 512) * gate
            s = self.if_(cur, j)
            res[h] = self.out[h](s.mean(0))
        a, v = res["a_fc"], res["v_fc"]
        return v + a - a.mean(-1, keepdim=True)


class SpikingJellyNet(_Base):
    def __init__(self, params, dsqn=False):
        super().__init__(params, dsqn)
        from spikingjelly.activation_based import layer, neuron, surrogate

        sur = lambda: surrogate.Sigmoid(alpha=ALPHA)
        self.lifs = nn.ModuleList([
            neuron.LIFNode(tau=TAU, decay_input=True, v_threshold=V_TH, v_reset=0.0,
                           surrogate_function=sur(), detach_reset=False, step_mode="m")
            for _ in range(4)
        ])
        self.ifs = nn.ModuleList([
            neuron.IFNode(v_threshold=V_TH, v_reset=0.0, surrogate_function=sur(),
                          detach_reset=False, step_mode="m")
            for _ in range(2)
        ])
        # Multi-step containers for the layers after the first conv (T*B batching).
        self.convs_m = nn.ModuleList([layer.SeqToANNContainer(c) for c in self.convs[1:]])

    def lif(self, x_seq, i):
        return self.lifs[i](x_seq)

    def if_(self, x_seq, i):
        return self.ifs[i](x_seq)

    def trunk(self, x):
        T = TIME_STEPS
        cur = self.convs[0](x)
        s = self.lifs[0](cur.unsqueeze(0).repeat(T, 1, 1, 1, 1))
        for i in (1, 2):
            s = self.lifs[i](self.convs_m[i - 1](s))
        return s.flatten(2)

    def forward(self, obs_u8, tasks):
        from spikingjelly.activation_based import functional

        functional.reset_net(self)
        return super().forward(obs_u8, tasks)


class SnnTorchNet(_Base):
    def __init__(self, params, dsqn=False):
        super().__init__(params, dsqn)
        import snntorch as snn
        from snntorch import surrogate

        sg = surrogate.sigmoid(slope=ALPHA)
        self.lifs = nn.ModuleList([
            snn.Leaky(beta=1.0 - 1.0 / TAU, threshold=V_TH, spike_grad=sg,
                      reset_mechanism="zero", reset_delay=False)
            for _ in range(4)
        ])
        self.ifs = nn.ModuleList([
            snn.Leaky(beta=1.0, threshold=V_TH, spike_grad=sg,
                      reset_mechanism="zero", reset_delay=False)
            for _ in range(2)
        ])

    @staticmethod
    def _run(neuron, x_seq, scale):
        mem = torch.zeros_like(x_seq[0])
        out = []
        for t in range(x_seq.shape[0]):
            spk, mem = neuron(x_seq[t] * scale if scale != 1.0 else x_seq[t], mem)
            out.append(spk)
        return torch.stack(out)

    def lif(self, x_seq, i):
        return self._run(self.lifs[i], x_seq, 1.0 / TAU)

    def if_(self, x_seq, i):
        return self._run(self.ifs[i], x_seq, 1.0)


def build(framework: str, params, dsqn: bool):
    cls = {"spikingjelly": SpikingJellyNet, "snntorch": SnnTorchNet}[framework]
    return cls(params, dsqn)
