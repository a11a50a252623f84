"""LLaDA2.x through every front end: the shipped eval configs, ``infogain eval`` (with the ``llada2``
alias), ``chat``, the lm-evaluation-harness model (generate_until and the block-wise log-likelihood),
``infogain bench --random-weights llada2-mini --config ...`` and ``benches/bench_models.py``, on a tiny
official-format LLaDA2 checkpoint that carries the toy model's tokenizer."""
import argparse
import importlib.util
import io
import json
import os

import pytest
import torch

from infogain import models
from infogain.apps import bench, chat, cli
from infogain.evaluation import load_config, shipped_configs
from infogain.samplers import make_sampler
from tiny_checkpoints import tiny_with_toy_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEN = dict(gen_length=8, steps=8, block_length=8, seed=0)
# A LLaDA2 shrunk for the CPU, MoE fields included: 16 experts, 4 per token, 4 groups of which 2 are kept.
SMALL = ("hidden_size=64,intermediate_size=96,num_hidden_layers=2,num_attention_heads=4,num_key_value_heads=2,"
         "head_dim=16,num_experts=16,num_experts_per_tok=4,n_group=4,topk_group=2,moe_intermediate_size=32,"
         "vocab_size=512,mask_token_id=511,eos_token_id=510,pad_token_id=510")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_with_toy_tokenizer("llada2", tmp_path_factory.mktemp("llada2") / "model" / "llada2")


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return models.load(checkpoint)


# ---- configs ------------------------------------------------------------------------------------

def test_shipped_llada2_configs():
    names = {n for n in shipped_configs() if "_llada2_" in n}
    tasks = ("gsm8k", "math500", "humaneval", "mbpp")
    assert names == {f"{t}_llada2_{s}" for t in tasks for s in ("info_gain", "fast_dllm", "threshold")}
    for name in sorted(names):
        cfg = load_config(name)
        task, sampler = name.split("_llada2_")
        if sampler == "threshold":   # the model's own decoder: official steps per block and threshold
            assert (cfg.task, cfg.sampler, cfg.model, cfg.block_length, cfg.steps, cfg.threshold) == (
                task, "llada2_threshold", "llada2", 32, 32, 0.95)
            continue
        same_task = load_config(f"{task}_{sampler}")   # the LLaDA config of the same task and sampler
        assert (cfg.task, cfg.sampler, cfg.model, cfg.output_dir) == (task, sampler, "llada2", f"results/{name}")
        assert (cfg.block_length, cfg.cache, cfg.chat_template) == (32, "prefix", True)
        assert (cfg.gen_length, cfg.steps, cfg.fewshot) == (same_task.gen_length, same_task.steps, same_task.fewshot)


# ---- eval ---------------------------------------------------------------------------------------

def test_generator_with_the_models_own_decoder_passes_on_its_options(checkpoint, loaded):
    from infogain.evaluation.generation import load_generator

    generator = load_generator({"model": checkpoint, "sampler": "llada2_threshold", "steps": 4,
                                "gen_length": 8, "block_length": 8, "candidate_number": 3, "threshold": 0.5})
    assert set(generator.options) <= generator.sampler.option_names and "candidate_number" not in generator.options
    got = generator.generate([[5, 6, 7]], seed=0, chat=False)
    want = make_sampler("llada2_threshold", loaded[0], steps=4, threshold=0.5, block_length=8).generate(
        [[5, 6, 7]], gen_length=8, seed=0)
    assert torch.equal(got.sequences, want.sequences)
    with pytest.raises(ValueError, match="threshold"):
        load_generator({"model": checkpoint, "sampler": "llada2_threshold", "threshold": 2.0})


def test_eval_toy_task_through_the_model_alias(checkpoint, tmp_path, monkeypatch, capsys):
    """``--model llada2`` reads ./model/llada2 (the checkpoint's parent folder is ``model``)."""
    monkeypatch.chdir(os.path.dirname(os.path.dirname(checkpoint)))
    out = str(tmp_path / "out")
    assert cli.main(["eval", "--task", "toy_multiplication", "--model", "llada2", "--max_samples", "2",
                     "--candidate_number", "2", "--cache", "prefix", "--output_dir", out, "--progress", "false",
                     "--threads", "1"]) == 0
    assert "toy_multiplication" in capsys.readouterr().out
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "samples.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert summary["complete"] and summary["problems"] == len(records) == 2
    gen_length = summary["generated_tokens"] // 2
    assert gen_length > 0 and all(sum(r["stats"]["tokens"].values()) == gen_length for r in records)


# ---- chat ---------------------------------------------------------------------------------------

def _chat(checkpoint, message):
    out = io.StringIO()
    flags = ["--device", "cpu", *[f"--{k.replace('_', '-')}={v}" for k, v in GEN.items()]]
    assert chat.main(["--model", checkpoint, *flags], stdin=io.StringIO(message + "\n"), stdout=out) == 0
    return out.getvalue()


def _sampler_answer(loaded, message):
    """The info_gain sampler's answer to ``message`` under the toy chat template (BOS, then the text)."""
    model, tokenizer = loaded
    prompt = [tokenizer.bos_token_id] + tokenizer(message, add_special_tokens=False)["input_ids"]
    return make_sampler("info_gain", model, tokenizer).generate([prompt], **GEN).texts[0]


MESSAGE = "12*3="   # 6 tokens with BOS: the prompt ends inside the first 8-token block


def test_chat_one_turn_answers_as_the_sampler(checkpoint, loaded):
    assert _chat(checkpoint, MESSAGE).rstrip("\n").endswith(_sampler_answer(loaded, MESSAGE))


def test_chat_streams_only_the_answer(checkpoint, loaded):
    assert _chat(checkpoint, MESSAGE) == f"assistant> {_sampler_answer(loaded, MESSAGE)}\n"


# ---- lm-evaluation-harness model ----------------------------------------------------------------

@pytest.fixture(scope="module")
def harness_model(checkpoint):
    pytest.importorskip("lm_eval")
    from infogain.evaluation.lm_eval_model import InfoGainLM

    return InfoGainLM(pretrained=checkpoint, device="cpu", candidate_number=2, block_length=4, mc_num=4,
                      threads=1)


def _requests(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i, ("t", i, 1)) for i, a in enumerate(args)]


def test_harness_generate_until_keeps_the_block_length(harness_model, loaded):
    """A request shorter than a block is generated as one whole block (the attention's block length is
    the model's, never shrunk to the request) and cut to max_gen_toks."""
    model, tokenizer = loaded
    texts = harness_model.generate_until(_requests("generate_until", [("12*3=", {"until": [], "max_gen_toks": 3})]))
    prompt = harness_model.tok_encode("12*3=")
    tokens = make_sampler("info_gain", model, tokenizer).generate(
        [prompt], gen_length=4, steps=4, block_length=4, candidate_number=2, seed=harness_model.seed).sequences[0]
    tokens = tokens[:3].tolist()
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[:tokens.index(tokenizer.eos_token_id)]
    assert texts == [tokenizer.decode(tokens, skip_special_tokens=True)]


def _block_causal_logprob(model, ids, position, block_length):
    """log p(ids[position] | ids[:position]) with the token masked and nothing after it: the conditional a
    block-wise decoder has when ``position`` is the only masked position of its block."""
    canvas = torch.tensor([ids[:position] + [model.config.mask_token_id]])
    logits = model(canvas, block_length=block_length).float()[0, position]
    return torch.log_softmax(logits, dim=-1)[ids[position]].item()


def test_harness_loglikelihood_is_the_block_wise_chain_rule(harness_model, loaded):
    """A continuation with one token in each of two blocks: each block's term is exact (one masked token),
    and the estimate is their sum, each conditioned on everything before it (earlier blocks clean)."""
    model, _ = loaded
    context = harness_model.tok_encode("1234567")
    context = context[:3] if len(context) % 4 != 3 else context   # the continuation straddles a block boundary
    assert len(context) % 4 == 3
    continuation = harness_model.tok_encode("89")[-2:]
    ids = context + continuation
    expected = sum(_block_causal_logprob(model, ids, len(context) + i, 4) for i in range(2))
    got, _ = harness_model._score(context, continuation, seed_texts=("a", "b"))
    assert got == pytest.approx(expected, abs=1e-4)
    # A bidirectional reading (both tokens masked together, each seeing the other block) differs.
    joint = torch.tensor([context + [model.config.mask_token_id] * 2])
    logprobs = torch.log_softmax(model(joint, block_length=4).float()[0, len(context):], dim=-1)
    assert abs(got - sum(logprobs[i, t].item() for i, t in enumerate(continuation))) > 1e-3


def test_harness_loglikelihood_greedy_flag(harness_model, loaded):
    model, _ = loaded
    context = harness_model.tok_encode("1234")
    canvas = torch.tensor([context + [model.config.mask_token_id]])
    logits = model(canvas, block_length=4).float()[0, -1]
    logits[model.config.mask_token_id] = float("-inf")
    best, other = logits.topk(2).indices.tolist()   # the greedy token and the runner-up
    (_, greedy), (_, not_greedy) = (harness_model._score(context, [t], seed_texts=("c", str(t))) for t in (best, other))
    assert greedy is True and not_greedy is False


# ---- benchmarks ---------------------------------------------------------------------------------

def test_bench_random_weights_llada2_with_small_config(tmp_path):
    out = tmp_path / "e2e.json"
    code = bench.main(["--random-weights", "llada2-mini", "--config", SMALL, "--head-scale", "8", "--dtype", "float32",
                       "--cache", "prefix", "--prompt-length", "12", "--gen-length", "8", "--steps", "8",
                       "--block-length", "8", "--candidates", "4", "--repeats", "1", "--threads", "1",
                       "--device", "cpu", "--out", str(out)])
    assert code == 0
    record = json.loads(out.read_text())
    (row,) = record["rows"]
    assert record["all_tokens_match"] and row["tokens_match"] and row["nfe"] >= 1
    assert record["settings"]["model"] == f"random-weights:llada2-mini ({SMALL}), head weights x8"
    assert record["environment"]["torch_threads"] == 1   # the checkout's benches/_common.py wrote the record


def test_bench_config_keeps_the_rotary_dim_consistent_and_checks_moe_fields():
    args = bench.build_parser().parse_args(["--random-weights", "llada2-mini", "--config", SMALL])
    model, _, _ = bench._load_model(args, torch.device("cpu"), torch.float32)
    moe = model.spec.moe
    assert (model.spec.head_dim, model.spec.rotary_dim) == (16, 8)   # partial_rotary_factor 0.5 of head_dim 16
    assert (moe.num_experts, moe.top_k, moe.n_group, moe.topk_group) == (16, 4, 4, 2)
    bad = bench.build_parser().parse_args(["--random-weights", "llada2-mini", "--config", SMALL + ",n_group=3"])
    with pytest.raises(ValueError, match="n_group"):
        bench._load_model(bad, torch.device("cpu"), torch.float32)
    with pytest.raises(SystemExit):
        bench.main(["--head-scale", "2"])   # only with --random-weights


def test_bench_models_shrinks_llada2_and_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_models_llada2", os.path.join(ROOT, "benches", "bench_models.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "llada2-mini" in module.ARCHITECTURES
    config = module.small_config("llada2-mini")
    assert (config["num_experts"], config["num_experts_per_tok"], config["n_group"], config["topk_group"]) == (16, 4, 4, 2)
    assert config["rotary_dim"] == config["head_dim"] * config["partial_rotary_factor"]
    args = argparse.Namespace(small=True, length=64, block=8, candidates=2, repeats=1)
    rows, used = module.bench_model("llada2-mini", args, torch.device("cpu"))
    assert [r["mode"] for r in rows] == ["block_causal"] and rows[0]["model"] == "llada2-mini-small"
    assert used["num_experts"] == 16 and rows[0]["speedup"] > 0
