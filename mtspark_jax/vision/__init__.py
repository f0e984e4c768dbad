"""The image path: data sets built and read through TFDS (``data``), the
spiking classifier's training and evaluation (``classification``), many
classifiers trained at once with ``vmap`` (``image_sweep``) and permuted
MNIST, where only the context tells the tasks apart (``permuted``)."""
