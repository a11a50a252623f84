"""The models' own decoders (``llada2_threshold``, ``llada21_edit``, ``fast_dllm_v2``) behind the
lm-evaluation-harness model and chat: their own options, typed from text and checked when the
front end starts; generate_until and a chat turn give what the decoder itself gives; an option a
decoder does not take is refused by name. On tiny LLaDA2 and Fast-dLLM v2 checkpoints over the toy
model's tokenizer, with a chat template (BOS, then the messages' text)."""
import io

import pytest
import torch

from infogain import models
from infogain.apps import chat
from infogain.samplers import make_sampler
from tiny_checkpoints import tiny_with_toy_tokenizer
# The tiny checkpoints of the families' front-end tests: vocabulary of 24 (mask 3, EOS 1, pad 0, BOS 2), 64 positions.

FAMILIES = ("llada2", "fast_dllm_v2")
# Prompts on which every decoder here answers something before its EOS (an empty answer would match anything).
CONTEXT = "3*4="
MESSAGE = "7+8="


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    return {family: tiny_with_toy_tokenizer(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def loaded(checkpoints):
    torch.set_num_threads(1)
    return {family: models.load(path) for family, path in checkpoints.items()}


def _answer(tokenizer, tokens):
    """What generate_until returns for generated ``tokens``: cut at the first EOS, decoded."""
    tokens = list(tokens)
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[:tokens.index(tokenizer.eos_token_id)]
    return tokenizer.decode(tokens, skip_special_tokens=True)


# ---- lm-evaluation-harness model ----------------------------------------------------------------

def _harness(checkpoint, sampler, **arguments):
    pytest.importorskip("lm_eval")
    from infogain.evaluation.lm_eval_model import InfoGainLM

    return InfoGainLM(pretrained=checkpoint, sampler=sampler, device="cpu", threads=1, **arguments)


def _generate_until(lm, context, max_gen_toks, **gen_kwargs):
    from lm_eval.api.instance import Instance

    request = Instance("generate_until", {}, (context, {"until": [], "max_gen_toks": max_gen_toks, **gen_kwargs}),
                       0, ("t", 0, 1))
    return lm.generate_until([request])[0]


# Options as --model_args text, and the typed values the decoder must receive.
CASES = [
    ("llada2_threshold", "llada2", {"threshold": "0.5", "steps": "3", "block_length": "8", "minimal_topk": "1"},
     {"threshold": 0.5, "steps": 3, "block_length": 8, "minimal_topk": 1}),
    ("llada21_edit", "llada2", {"threshold": "0.6", "editing_threshold": "0.7", "max_post_steps": "2",
                                "temperature": "0.9", "top_k": "5", "eos_early_stop": "yes"},
     {"threshold": 0.6, "editing_threshold": 0.7, "max_post_steps": 2, "temperature": 0.9, "top_k": 5,
      "eos_early_stop": True}),
    ("fast_dllm_v2", "fast_dllm_v2", {"threshold": "0.7", "sub_block_length": "2", "cache": "block",
                                      "temperature": "0.8", "top_p": "0.9"},
     {"threshold": 0.7, "sub_block_length": 2, "cache": "block", "temperature": 0.8, "top_p": 0.9}),
]


@pytest.mark.parametrize("sampler,family,arguments,typed", CASES, ids=[c[0] for c in CASES])
def test_harness_generate_until_is_the_decoders_own_output(checkpoints, loaded, sampler, family, arguments, typed):
    """gen_length is the request's max_gen_toks (5: not a whole block; the decoders take any length), the
    seed is the model argument's, the options are the decoder's own, typed from their text."""
    lm = _harness(checkpoints[family], sampler, seed="5", **arguments)
    assert lm.options == typed and type(lm.sampler).__name__ == type(make_sampler(sampler, *loaded[family])).__name__
    text = _generate_until(lm, CONTEXT, 5)
    model, tokenizer = loaded[family]
    prompt = lm.tok_encode(CONTEXT)
    want = make_sampler(sampler, model, tokenizer).generate([prompt], gen_length=5, seed=5, **typed).sequences[0]
    assert text and text == _answer(tokenizer, want[:5].tolist())


def test_harness_request_temperature_overrides_the_decoders(checkpoints, loaded):
    lm = _harness(checkpoints["fast_dllm_v2"], "fast_dllm_v2", temperature="1.5", seed="3")
    model, tokenizer = loaded["fast_dllm_v2"]
    text = _generate_until(lm, CONTEXT, 4, temperature=0.0, do_sample=False)
    want = make_sampler("fast_dllm_v2", model, tokenizer).generate([lm.tok_encode(CONTEXT)], gen_length=4,
                                                                   temperature=0.0, seed=3).sequences[0]
    assert text and text == _answer(tokenizer, want.tolist())


@pytest.mark.parametrize("sampler,family,arguments,message", [
    ("llada2_threshold", "llada2", {"candidate_number": "4"}, "unknown model argument.*candidate_number"),
    ("llada21_edit", "llada2", {"steps": "4"}, "unknown model argument.*steps"),
    ("fast_dllm_v2", "fast_dllm_v2", {"block_length": "8"}, "unknown model argument.*block_length"),
    ("fast_dllm_v2", "fast_dllm_v2", {"chat": "true"}, "unknown model argument.*chat"),
    ("llada2_threshold", "llada2", {"threshold": "high"}, "threshold must be a number"),
    ("llada21_edit", "llada2", {"max_post_steps": "two"}, "max_post_steps must be an integer"),
    ("llada2_threshold", "llada2", {"eos_early_stop": "maybe"}, "eos_early_stop must be true or false"),
    ("llada2_threshold", "llada2", {"threshold": "1.5"}, "threshold"),             # the decoder's own range check
    ("fast_dllm_v2", "fast_dllm_v2", {"sub_block_length": "3"}, "sub_block_length"),   # must divide bd_size 8
    ("fast_dllm_v2", "fast_dllm_v2", {"cache": "prefix"}, "cache must be one of"),   # the decoder's cache names
])
def test_harness_refuses_bad_decoder_options_at_construction(checkpoints, sampler, family, arguments, message):
    with pytest.raises(ValueError, match=message):
        _harness(checkpoints[family], sampler, **arguments)


def test_harness_refuses_a_decoder_for_a_model_it_does_not_fit():
    """The toy model is a LLaDA (bidirectional): Fast-dLLM v2's decoder refuses it in its own words."""
    with pytest.raises(ValueError, match="runs Fast-dLLM v2 models"):
        _harness("toy", "fast_dllm_v2")


@pytest.mark.parametrize("sampler,family", [("fast_dllm_v2", "llada2"), ("llada2_threshold", "fast_dllm_v2")])
def test_harness_refuses_a_decoder_of_another_family(checkpoints, sampler, family):
    with pytest.raises(ValueError, match=f"architecture is '{family}'"):
        _harness(checkpoints[family], sampler)


def test_decoder_option_types_come_from_the_decoders(loaded):
    pytest.importorskip("lm_eval")
    from infogain.evaluation.lm_eval_model import decoder_option_types

    llada2 = decoder_option_types(make_sampler("llada2_threshold", *loaded["llada2"]))
    assert llada2 == {"gen_length": (int, False), "block_length": (int, False), "threshold": (float, False),
                      "temperature": (float, False), "top_k": (int, True), "top_p": (float, True),
                      "eos_early_stop": (bool, False), "seed": (int, True), "steps": (int, False),
                      "minimal_topk": (int, False)}
    fast = decoder_option_types(make_sampler("fast_dllm_v2", *loaded["fast_dllm_v2"]))
    assert fast == {"gen_length": (int, False), "threshold": (float, False), "sub_block_length": (int, False),
                    "cache": (str, False), "temperature": (float, False), "top_p": (float, False),
                    "seed": (int, True), "stop_at_eos": (bool, False)}
    with pytest.raises(TypeError, match="decoder"):
        decoder_option_types(make_sampler("info_gain", *loaded["llada2"]))


# ---- chat ---------------------------------------------------------------------------------------

CHAT = {"llada2_threshold": ("llada2", {"gen_length": 8, "threshold": 0.5, "steps": 4, "seed": 0}),
        "fast_dllm_v2": ("fast_dllm_v2", {"gen_length": 8, "threshold": 0.7, "cache": "none", "seed": 0})}


@pytest.mark.parametrize("sampler", sorted(CHAT))
def test_chat_one_turn_prints_the_decoders_answer(checkpoints, loaded, sampler):
    family, options = CHAT[sampler]
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    out = io.StringIO()
    assert chat.main(["--model", checkpoints[family], "--device", "cpu", "--sampler", sampler, *flags],
                     stdin=io.StringIO(MESSAGE + "\n"), stdout=out) == 0
    model, tokenizer = loaded[family]
    prompt = [tokenizer.bos_token_id] + tokenizer(MESSAGE, add_special_tokens=False)["input_ids"]
    answer = make_sampler(sampler, model, tokenizer).generate([prompt], **options).texts[0]
    assert answer and out.getvalue() == f"assistant> {answer}\n"


@pytest.mark.parametrize("sampler,flags,named", [
    ("llada2_threshold", ["--candidate-number", "4"], "candidate_number"),
    ("llada2_threshold", ["--cache", "prefix"], "cache"),
    ("fast_dllm_v2", ["--block-length", "8"], "block_length"),
    ("fast_dllm_v2", ["--threshold", "1.5"], "threshold"),          # the decoder's own check
    ("fast_dllm_v2", ["--cache", "dual"], "cache must be one of"),   # its own cache names
])
def test_chat_refuses_what_the_decoder_does_not_take(checkpoints, capsys, sampler, flags, named):
    family = CHAT[sampler][0]
    with pytest.raises(SystemExit):
        chat.main(["--model", checkpoints[family], "--device", "cpu", "--sampler", sampler, *flags],
                  stdin=io.StringIO(MESSAGE + "\n"), stdout=io.StringIO())
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_chat_fits_a_decoders_default_gen_length_to_the_model(loaded):
    """The decoders' default gen_length (LLaDA2: 256, Fast-dLLM v2: 128) does not fit 64 positions: half."""
    for sampler, family in (("llada2_threshold", "llada2"), ("fast_dllm_v2", "fast_dllm_v2")):
        decoder = make_sampler(sampler, *loaded[family])
        assert chat.decoder_options(decoder, {})["gen_length"] == 32
        assert chat.decoder_options(decoder, {"gen_length": 5, "seed": 1}) == {"gen_length": 5, "seed": 1}
        with pytest.raises(ValueError, match="gen_length"):
            chat.decoder_options(decoder, {"gen_length": 64})


def test_harness_reads_text_arguments_for_the_other_samplers_too(checkpoints):
    """Text values (as --model_args gives them) are typed before generate's checks, seed included."""
    lm = _harness(checkpoints["llada2"], "info_gain", seed="5", threshold="0.5", candidate_number="2")
    assert (lm.seed, lm.options) == (5, {"threshold": 0.5, "candidate_number": 2})
