"""mtspark_jax.config_flags: one reading of text for flags, --set overrides and sweep grids."""

import dataclasses

import pytest
from absl import flags

from mtspark_jax import config_flags as cf
from mtspark_jax.rl import training
from mtspark_jax.vision import classification, permuted


@pytest.mark.parametrize("tp,text,value", [
    (bool, "True", True), (bool, "0", False), (bool, "no", False),
    (int, "12000", 12000), (int, "1.2e4", 12000), (float, "3e-4", 3e-4), (str, " atan ", "atan"),
    (tuple[str, ...], "Pong,Breakout", ("Pong", "Breakout")), (tuple[str, ...], "", ()),
    (tuple[int, int, int], "28, 28,1", (28, 28, 1)),
    (tuple[tuple[int, int, int], ...], "64:5:2,128:3:2", ((64, 5, 2), (128, 3, 2))),
])
def test_parse_value_reads_each_field_type_and_format_value_inverts_it(tp, text, value):
    assert cf.parse_value(tp, text) == value
    assert cf.parse_value(tp, cf.format_value(value)) == value


@pytest.mark.parametrize("tp,text", [
    (bool, "maybe"), (int, "1.5"), (int, "ten"), (float, "x"), (tuple[int, int, int], "28,28"),
    (tuple[tuple[int, int, int], ...], "64,5,2;128,3,2"), (tuple[tuple[int, int, int], ...], "64:5"),
])
def test_parse_value_rejects_bad_text(tp, text):
    with pytest.raises(ValueError):
        cf.parse_value(tp, text)


def test_apply_overrides_casts_to_each_field_and_names_the_bad_one():
    base = training.TrainConfig()
    cfg = cf.apply_overrides(base, ["batch_targets=false", "lr=0.0003", "num_envs=6", "games=Pong,Breakout",
                                    "eps_decay_steps=2e4"])
    assert cfg == dataclasses.replace(base, batch_targets=False, lr=3e-4, num_envs=6, games=("Pong", "Breakout"),
                                      eps_decay_steps=20_000)
    assert isinstance(cfg.num_envs, int) and isinstance(cfg.lr, float)
    with pytest.raises(ValueError, match="no field 'learning_rate'"):
        cf.apply_overrides(base, ["learning_rate=1"])
    with pytest.raises(ValueError, match="key=value"):
        cf.apply_overrides(base, ["lr"])
    with pytest.raises(ValueError, match="num_envs"):
        cf.apply_overrides(base, ["num_envs=four"])
    image = cf.apply_overrides(classification.ImageConfig(), ["convs=8:3:2", "image_shape=28,28,1"])
    assert image.convs == ((8, 3, 2),) and image.image_shape == (28, 28, 1)


@pytest.mark.parametrize("cls", [training.TrainConfig, classification.ImageConfig, permuted.PermutedConfig])
def test_every_config_field_has_help_from_its_docstring(cls):
    helps = cf.field_help(cls)
    assert set(cf.field_types(cls)) <= set(helps), set(cf.field_types(cls)) - set(helps)
    assert all(len(h) > 10 for h in helps.values()), helps


def test_field_help_reads_multi_name_entries_and_continuations():
    @dataclasses.dataclass(frozen=True)
    class Toy:
        """Toy.

        Attributes:
          a, b: first line
            second line.
          c / d: other.
        """

        a: int = 0
        b: int = 0
        c: str = ""
        d: str = ""

    assert cf.field_help(Toy) == {"a": "first line second line.", "b": "first line second line.",
                                  "c": "other.", "d": "other."}


def test_flags_apply_only_what_was_given_over_the_base():
    fv = flags.FlagValues()
    base = classification.ImageConfig(hidden=512)
    cf.define_flags(classification.ImageConfig, base=base, flag_values=fv)
    fv(["prog", "--convs=8:3:2,16:3:1", "--nobatch_norm", "--epochs=2", "--datasets=mnist"])
    cfg = cf.config_from_flags(base, fv)
    assert cfg == dataclasses.replace(base, convs=((8, 3, 2), (16, 3, 1)), batch_norm=False, epochs=2,
                                      datasets=("mnist",))
    assert "[default: 512]" in fv["hidden"].help
    fv.unparse_flags()
    fv(["prog", "--image_shape=28,28"])
    with pytest.raises(ValueError, match="--image_shape"):
        cf.config_from_flags(base, fv)


def test_parse_grid_reads_values_as_their_field_type():
    types = cf.field_types(training.TrainConfig)
    grid = cf.parse_grid("lr=1e-4,3e-4; eps_decay_steps=1e4,20000 ;surrogate=atan", types)
    assert grid == {"lr": (1e-4, 3e-4), "eps_decay_steps": (10_000, 20_000), "surrogate": ("atan",)}
    assert all(isinstance(v, int) for v in grid["eps_decay_steps"])
    for bad, match in [("lr", "name=v1,v2"), ("lrate=1", "cannot sweep 'lrate'"), ("lr=", "no values"),
                       ("num_envs=1.5", "num_envs=1.5")]:
        with pytest.raises(ValueError, match=match):
            cf.parse_grid(bad, types)


def test_set_items_split_by_a_list_flag_are_joined_back():
    assert cf.join_list_items(["games=Pong", "Breakout", "lr=1e-4"]) == ["games=Pong,Breakout", "lr=1e-4"]
    fv = flags.FlagValues()
    cf.define_set_flag(training.TrainConfig, flag_values=fv)
    fv(["prog", "--set=games=Pong,Breakout,lr=1e-4,batch_norm=true"])
    cfg = cf.apply_overrides(training.TrainConfig(), fv.set)
    assert (cfg.games, cfg.lr, cfg.batch_norm) == (("Pong", "Breakout"), 1e-4, True)
