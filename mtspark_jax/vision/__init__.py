"""The image path: data sets built and read through TFDS (``data``), the
spiking classifier's training and evaluation (``classification``) and
permuted MNIST, where only the context tells the tasks apart (``permuted``)."""
