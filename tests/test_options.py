"""One options parser (infogain.samplers.options): the same option spelled the same way means the same thing in
every front end (chat flags, eval YAML and --key value, lm-eval --model_args, bench flags), and every option
has one default."""
import dataclasses

import pytest

from infogain.apps import bench, chat, demo
from infogain.evaluation import EvalConfig, load_config
from infogain.evaluation.config import EVAL_OPTION_DEFAULTS
from infogain.samplers import GenerateOptions
from infogain.samplers.options import (FALSE_WORDS, INTERNAL_OPTIONS, TRUE_WORDS, field_types, option_types,
                                       parse_options, parse_value)

# A valid value other than the default, as text, for every option a front end takes by name.
SAMPLES = {"gen_length": "512", "steps": "128", "block_length": "64", "candidate_number": "4",
           "position_temperature": "0.5", "threshold": "0.5", "temperature": "0.7", "variant": "lookum",
           "cache": "dual", "parallel_bypass": "Yes", "eos_penalty": "1.5", "stop_at_eos": "off",
           "lookahead_eos_fill": "ON", "seed": "7", "gamma": "0.02", "fused_head": "0"}
# Options eval spells the same but sets otherwise: its seed is the run's (each batch's seed derives from it),
# fused_head is not a config key (an implementation choice; adding a key would change every config hash).
NOT_EVAL_KEYS = ("seed", "fused_head")
# bench's sampler flags: the option -> its flag (gen_length / steps / block_length go through the shape).
BENCH_FLAGS = {"candidate_number": "--candidate-number", "position_temperature": "--position-temperature",
               "threshold": "--threshold", "gen_length": "--gen-length", "steps": "--steps",
               "block_length": "--block-length"}
BENCH_DEST = {"candidate_number": "candidates"}


def test_samples_cover_every_option():
    assert set(SAMPLES) == set(option_types())
    assert not set(INTERNAL_OPTIONS) & set(option_types())
    for name, text in SAMPLES.items():
        value = parse_options({name: text})[name]
        assert value != getattr(GenerateOptions, name), name   # the test really changes something
        GenerateOptions(**{name: value}).validate()


def via_chat(name, text):
    args = chat._build_parser().parse_args(["--model", "toy", "--" + name.replace("_", "-"), text])
    return chat.generate_options(args)[name]


def via_eval(name, text):
    return load_config(None, ["--task", "gsm8k", "--" + name, text]).generate_options()[name]


def via_eval_yaml(name, text, tmp_path):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(f"task: gsm8k\n{name}: {text}\n")
    raw = yaml.safe_load(path.read_text())[name]   # YAML types some values itself (0.5, 7, off, ...)
    return load_config(str(path)).generate_options()[name], raw


def via_lm_eval(name, text):
    lm_eval_model = pytest.importorskip("infogain.evaluation.lm_eval_model")
    from lm_eval.utils import simple_parse_args_string

    typed = simple_parse_args_string(f"{name}={text}")   # the harness types some values itself
    as_text = lm_eval_model.sampler_options({name: text}, diffusion=True, sampler="info_gain")[name]
    as_typed = lm_eval_model.sampler_options(typed, diffusion=True, sampler="info_gain")[name]
    assert as_text == as_typed, name
    return as_text


def via_bench(name, text):
    args = bench.build_parser().parse_args([BENCH_FLAGS[name], text])
    return getattr(args, BENCH_DEST.get(name, name))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_option_means_the_same_in_every_front_end(name, tmp_path):
    text = SAMPLES[name]
    expected = GenerateOptions(**parse_options({name: text})).validate()
    results = {"chat": via_chat(name, text), "lm-eval": via_lm_eval(name, text)}
    if name not in NOT_EVAL_KEYS:
        results["eval --key value"] = via_eval(name, text)
        results["eval yaml"], _ = via_eval_yaml(name, text, tmp_path)
    if name in BENCH_FLAGS:
        results["bench"] = via_bench(name, text)
    for front_end, value in results.items():
        assert GenerateOptions(**{name: value}) == expected, (front_end, name, value)


@pytest.mark.parametrize("word", [w for w in TRUE_WORDS + FALSE_WORDS] + [w.upper() for w in TRUE_WORDS])
def test_one_set_of_boolean_spellings(word, tmp_path):
    expected = word.lower() in TRUE_WORDS
    assert via_chat("parallel_bypass", word) is expected
    assert via_eval("parallel_bypass", word) is expected
    assert via_lm_eval("parallel_bypass", word) is expected
    yaml_value, _ = via_eval_yaml("parallel_bypass", word, tmp_path)
    assert yaml_value is expected


@pytest.mark.parametrize("name, text, message", [
    ("threshold", "high", "threshold must be a number"),
    ("candidate_number", "1.5", "candidate_number must be an integer"),
    ("stop_at_eos", "maybe", "stop_at_eos must be true or false"),
    ("gen_length", "none", "gen_length must not be null"),
])
def test_bad_values_are_refused_naming_the_option(name, text, message, capsys):
    with pytest.raises(ValueError, match=message):
        parse_options({name: text})
    with pytest.raises(ValueError, match=message):
        load_config(None, ["--task", "gsm8k", "--" + name, text])
    lm_eval_model = pytest.importorskip("infogain.evaluation.lm_eval_model")
    with pytest.raises(ValueError, match=message):
        lm_eval_model.sampler_options({name: text}, diffusion=True, sampler="info_gain")
    with pytest.raises(SystemExit):
        chat._build_parser().parse_args(["--model", "toy", "--" + name.replace("_", "-"), text])
    assert message in capsys.readouterr().err


def test_unknown_options_are_refused():
    with pytest.raises(ValueError, match="unknown sampler option 'candidates'"):
        parse_options({"candidates": "4"})
    with pytest.raises(ValueError, match="unknown key 'candidates'"):
        load_config(None, ["--task", "gsm8k", "--candidates", "4"])
    lm_eval_model = pytest.importorskip("infogain.evaluation.lm_eval_model")
    with pytest.raises(ValueError, match="unknown model argument"):
        lm_eval_model.sampler_options({"candidates": "4"}, diffusion=True, sampler="info_gain")


def test_nulls_and_typed_values():
    assert parse_value("seed", "null", int, nullable=True) is None
    assert parse_value("seed", "None", int, nullable=True) is None
    assert parse_value("task", "none", str, nullable=True) == "none"   # a word, not a null, for text fields
    assert parse_value("task", "null", str, nullable=True) is None
    assert parse_value("steps", 64.0, int) == 64 and parse_value("steps", " 64 ", int) == 64
    assert parse_value("flag", 1, bool) is True and parse_value("flag", 0, bool) is False
    with pytest.raises(ValueError, match="steps must be an integer"):
        parse_value("steps", True, int)
    with pytest.raises(ValueError, match="flag must be true or false"):
        parse_value("flag", 2, bool)
    assert field_types(EvalConfig)["max_samples"] == (int, True)
    assert "on_block" not in field_types(GenerateOptions)


def test_one_default_per_option():
    """Each front end takes generate's default, except the overrides each names in one place."""
    defaults = EvalConfig()
    generate_defaults = GenerateOptions()
    for name in option_types():
        if name in NOT_EVAL_KEYS + ("variant", "lookahead_eos_fill"):
            continue
        expected = EVAL_OPTION_DEFAULTS.get(name, getattr(generate_defaults, name))
        assert getattr(defaults, name) == expected, name
    assert set(EVAL_OPTION_DEFAULTS) == {"cache"}
    options = GenerateOptions(**EvalConfig(task="gsm8k").generate_options())
    assert options.cache == "prefix" and options.lookahead_eos_fill == generate_defaults.lookahead_eos_fill
    args = bench.build_parser().parse_args([])
    assert (args.candidates, args.position_temperature, args.threshold) == (
        generate_defaults.candidate_number, generate_defaults.position_temperature, generate_defaults.threshold)
    assert demo._build_parser().parse_args([]).cache == generate_defaults.cache
    unset = chat.generate_options(chat._build_parser().parse_args(["--model", "toy"]))
    assert unset == {} and dataclasses.asdict(GenerateOptions(**unset)) == dataclasses.asdict(generate_defaults)
