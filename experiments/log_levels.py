"""Launcher log levels: only warnings and errors, unless ``--verbosity`` asks for more.

Under ``absl.app.run`` the root logger passes INFO records, so a CPU run
printed TFDS's ``dataset_info.py`` "Load dataset info" lines, Orbax's line per
checkpoint save, and JAX's "Unable to initialize backend 'tpu'" (an INFO
record of ``jax._src.xla_bridge``) before its first useful line. Every
launcher in ``experiments/`` calls :func:`quiet` as the first step of its
``main``, before JAX starts a backend.

Only the log level changes: ``JAX_PLATFORMS`` is left alone, so JAX still
picks a GPU or TPU when one is there. absl's own ``--verbosity`` (or ``-v``)
brings every line back: ``--verbosity=0`` shows INFO, ``--verbosity=1``
DEBUG.
"""

from __future__ import annotations

from absl import flags, logging


def quiet(flag_values: flags.FlagValues = flags.FLAGS) -> bool:
    """Sets absl's verbosity to WARNING unless ``--verbosity`` was on the command line.

    Args:
      flag_values: the parsed flags (default absl's global ``FLAGS``).

    Returns:
      ``True`` when the level was lowered, ``False`` when the user's
      ``--verbosity`` was kept.
    """
    if flag_values["verbosity"].present:
        return False
    logging.set_verbosity(logging.WARNING)
    return True
