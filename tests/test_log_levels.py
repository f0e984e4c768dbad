"""experiments/log_levels.py: launchers print no INFO lines unless --verbosity asks for them."""

import ast
import os
import subprocess
import sys

import jax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = ["train_atari.py", "train_images.py", "permuted_mnist.py", "sweep.py", "minatar_results.py",
             "eval_atari.py", "eval_task_bn.py"]
TPU_LINE = "Unable to initialize backend 'tpu'"

# What a launcher does before its first useful line: a library's INFO record (TFDS and Orbax log through
# absl) and JAX's backend start, which logs the TPU line at INFO on a machine without a TPU.
NOISY_MAIN = """
from absl import app, logging
import jax
from experiments import log_levels

def main(argv):
    log_levels.quiet()
    logging.info("an INFO line from a library")
    jax.numpy.zeros(1).block_until_ready()
    print("first useful line")

app.run(main)
"""


def _run(*args):
    proc = subprocess.run([sys.executable, "-c", NOISY_MAIN, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": ROOT}, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_quiet_hides_info_lines_and_the_tpu_line():
    proc = _run()
    assert proc.stdout == "first useful line\n"
    assert proc.stderr == ""


@pytest.mark.parametrize("flag", ["--verbosity=0", "-v=1"])
def test_verbosity_brings_them_back(flag):
    proc = _run(flag)
    assert "an INFO line from a library" in proc.stderr
    if jax.default_backend() != "tpu":  # on a TPU host the TPU backend starts and logs no such line
        assert TPU_LINE in proc.stderr


@pytest.mark.parametrize("name", LAUNCHERS)
def test_every_launcher_sets_the_level_first_in_main(name):
    tree = ast.parse(open(os.path.join(ROOT, "experiments", name)).read())
    main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
    body = [s for s in main.body if not (isinstance(s, ast.Delete) or isinstance(s, ast.Expr)
                                         and isinstance(s.value, ast.Constant))]  # skip `del argv`, docstring
    assert ast.unparse(body[0]) == "log_levels.quiet()"
