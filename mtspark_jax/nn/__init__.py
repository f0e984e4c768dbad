"""Network parts: spiking neurons (``spiking``), dendritic context gates
(``dendrites``), the Q-networks and the image classifier (``networks``), their
fused layer kernels (``ops``) and the energy estimate of a forward pass
(``energy``). Pure Flax/JAX; no environments, no data sets."""
