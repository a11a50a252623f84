"""SDAR-MoE and Fast-dLLM v2 through every front end: the shipped eval configs, ``infogain eval`` (with the
``--model`` alias; Fast-dLLM v2 also with its own decoder, its sub-block cache and ``sub_block_length``),
``chat``, the lm-evaluation-harness model (generate_until; the block-wise log-likelihood on Fast-dLLM v2,
refused on SDAR-MoE), ``infogain bench --random-weights ... --config ...`` and ``benches/bench_models.py``,
on tiny official-format checkpoints that carry the toy model's tokenizer and a chat template."""
import argparse
import importlib.util
import io
import json
import os

import pytest
import torch

from infogain import models
from infogain.apps import bench, chat, cli
from infogain.evaluation import load_config, load_generator, shipped_configs
from infogain.samplers import make_sampler
from tiny_checkpoints import tiny_with_toy_tokenizer, write_tiny_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("sdar_moe", "fast_dllm_v2")
# The tiny checkpoints' blocks: SDAR-MoE decodes in any block length (its blocks count from the generation's
# start; 4 is its training block), Fast-dLLM v2's attention block is its bd_size (8 in the tiny config).
BLOCK = {"sdar_moe": 4, "fast_dllm_v2": 8}
PRESET = {"sdar_moe": "sdar-moe-30b-a3b", "fast_dllm_v2": "fast-dllm-v2-7b"}
# CPU-sized random-weight models of the full presets (MoE fields included for SDAR-MoE).
SMALL = {
    "sdar_moe": "hidden_size=64,intermediate_size=96,moe_intermediate_size=32,num_hidden_layers=2,"
                "num_attention_heads=4,num_key_value_heads=2,head_dim=16,num_experts=8,num_experts_per_tok=2,"
                "vocab_size=512,mask_token_id=511,eos_token_id=510,pad_token_id=510,bos_token_id=510",
    "fast_dllm_v2": "hidden_size=64,intermediate_size=96,num_hidden_layers=2,num_attention_heads=4,"
                    "num_key_value_heads=2,vocab_size=512,mask_token_id=511,eos_token_id=510,pad_token_id=510,"
                    "bos_token_id=509,bd_size=8",
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """family -> checkpoint folder; all live in one ``model`` folder (the ``--model NAME`` alias)."""
    root = tmp_path_factory.mktemp("families") / "model"
    return {family: tiny_with_toy_tokenizer(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def loaded(checkpoints):
    return {family: models.load(path) for family, path in checkpoints.items()}


# ---- configs ------------------------------------------------------------------------------------

def test_shipped_configs_of_both_families():
    tasks = ("gsm8k", "math500", "humaneval", "mbpp")
    for family, suffixes in (("sdar_moe", ("info_gain", "fast_dllm")), ("fast_dllm_v2", ("info_gain", "own"))):
        names = {n for n in shipped_configs() if f"_{family}_" in n}
        assert names == {f"{t}_{family}_{s}" for t in tasks for s in suffixes}
        for name in sorted(names):
            cfg = load_config(name)
            task, suffix = name.split(f"_{family}_")
            assert (cfg.task, cfg.model, cfg.output_dir, cfg.chat_template) == (task, family, f"results/{name}", True)
            if suffix == "own":   # the model's decoder: threshold 0.9 over sub-blocks of 8, the sub-block cache
                assert (cfg.sampler, cfg.threshold, cfg.sub_block_length, cfg.cache) == (
                    "fast_dllm_v2", 0.9, 8, "sub_block")
                continue
            same_task = load_config(f"{task}_{suffix}")   # the LLaDA config of the same task and sampler
            assert (cfg.sampler, cfg.cache, cfg.sub_block_length) == (suffix, "prefix", None)
            assert cfg.block_length == (16 if family == "sdar_moe" else 32)
            assert (cfg.gen_length, cfg.steps, cfg.fewshot, cfg.threshold) == (
                same_task.gen_length, same_task.steps, same_task.fewshot, same_task.threshold)


def test_sub_block_length_is_a_key_of_the_decoders_that_take_it(checkpoints):
    from infogain.evaluation import EvalConfig, config_hash

    with pytest.raises(ValueError, match="sub_block_length applies to"):
        load_config(None, ["--task", "gsm8k", "--sub_block_length", "8"])   # info_gain takes no sub-blocks
    with pytest.raises(ValueError, match="sub_block_length"):
        load_config(None, ["--task", "gsm8k", "--sampler", "fast_dllm_v2", "--sub_block_length", "0"])
    with pytest.raises(ValueError, match="cache"):   # the decoder's cache names are its own
        load_config(None, ["--task", "gsm8k", "--cache", "sub_block"])
    cfg = load_config(None, ["--task", "gsm8k", "--sampler", "fast_dllm_v2", "--cache", "sub_block",
                             "--sub_block_length", "4"])
    assert cfg.generate_options()["sub_block_length"] == 4 and cfg.cache == "sub_block"
    # Unset, the key leaves the config hash as it was before the key existed: the digest of the other keys.
    import hashlib

    from infogain.evaluation.config import NOT_HASHED

    plain = EvalConfig(task="gsm8k")
    keyed = {k: v for k, v in plain.to_dict().items() if k not in NOT_HASHED + ("model", "sub_block_length")}
    expected = hashlib.sha256(json.dumps({"config": keyed, "model": "m", "task": "t"}, sort_keys=True).encode())
    assert config_hash(plain, "m", "t") == expected.hexdigest()[:16]
    assert config_hash(cfg, "m", "t") != config_hash(EvalConfig(task="gsm8k", sampler="fast_dllm_v2",
                                                                cache="sub_block"), "m", "t")


# ---- eval ---------------------------------------------------------------------------------------

def test_generator_passes_the_fast_dllm_v2_decoders_options_on(checkpoints, loaded):
    path = checkpoints["fast_dllm_v2"]
    generator = load_generator({"model": path, "sampler": "fast_dllm_v2", "cache": "sub_block",
                                "sub_block_length": 2, "threshold": 0.5, "gen_length": 16, "candidate_number": 3})
    assert set(generator.options) <= generator.sampler.option_names and "candidate_number" not in generator.options
    assert (generator.options["sub_block_length"], generator.options["cache"]) == (2, "sub_block")
    got = generator.generate([[5, 6, 7]], seed=0, chat=False)
    want = make_sampler("fast_dllm_v2", loaded["fast_dllm_v2"][0], cache="sub_block", sub_block_length=2,
                        threshold=0.5).generate([[5, 6, 7]], gen_length=16, seed=0)
    assert torch.equal(got.sequences, want.sequences)
    # The package's "use a cache" (prefix / dual) means the decoder's own default cache.
    assert load_generator({"model": path, "sampler": "fast_dllm_v2", "cache": "dual"}).options.get("cache") is None
    with pytest.raises(ValueError, match="sub_block_length"):   # must divide the model's block (8)
        load_generator({"model": path, "sampler": "fast_dllm_v2", "sub_block_length": 3})


def test_a_decoder_without_sub_blocks_refuses_sub_block_length(tmp_path):
    llada2 = write_tiny_checkpoint("llada2", tmp_path / "llada2")
    assert load_generator({"model": llada2, "sampler": "llada2_threshold", "steps": 4}).sampler is not None
    with pytest.raises(ValueError, match="sub_block_length is not an option of the llada2_threshold decoder"):
        load_generator({"model": llada2, "sampler": "llada2_threshold", "sub_block_length": 4})


@pytest.mark.parametrize("family, flags", [
    ("sdar_moe", ["--candidate_number", "2", "--cache", "prefix"]),
    ("fast_dllm_v2", ["--candidate_number", "2", "--cache", "prefix"]),
    ("fast_dllm_v2", ["--sampler", "fast_dllm_v2", "--cache", "sub_block", "--sub_block_length", "4"]),
], ids=["sdar_moe-info_gain", "fast_dllm_v2-info_gain", "fast_dllm_v2-own"])
def test_eval_toy_task_through_the_model_alias(checkpoints, family, flags, tmp_path, monkeypatch, capsys):
    """``--model NAME`` reads ./model/NAME (the checkpoints' parent folder is ``model``)."""
    monkeypatch.chdir(os.path.dirname(os.path.dirname(checkpoints[family])))
    out = tmp_path / "out"
    argv = ["eval", "--task", "toy_multiplication", "--model", family, "--max_samples", "2", *flags,
            "--output_dir", str(out), "--progress", "false", "--threads", "1"]
    assert cli.main(argv) == 0 and "toy_multiplication" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    # Each problem's answer is the task's 6 tokens, every one committed by the sampler (or the EOS fill).
    assert summary["complete"] and summary["problems"] == len(records) == 2 and summary["generated_tokens"] == 12
    assert [sum(r["stats"]["tokens"].values()) for r in records] == [6, 6]
    assert summary["config"]["sampler"] == (flags[1] if flags[0] == "--sampler" else "info_gain")


# ---- chat ---------------------------------------------------------------------------------------

MESSAGE = "12*3="   # 6 tokens with BOS


@pytest.mark.parametrize("family", FAMILIES)
def test_chat_one_turn_answers_as_the_sampler(checkpoints, loaded, family):
    gen = dict(gen_length=8, steps=8, block_length=BLOCK[family], seed=0)
    out = io.StringIO()
    flags = ["--device", "cpu", *[f"--{k.replace('_', '-')}={v}" for k, v in gen.items()]]
    assert chat.main(["--model", checkpoints[family], *flags], stdin=io.StringIO(MESSAGE + "\n"), stdout=out) == 0
    model, tokenizer = loaded[family]
    # The toy chat template: BOS, then the text.
    prompt = [tokenizer.bos_token_id] + tokenizer(MESSAGE, add_special_tokens=False)["input_ids"]
    answer = make_sampler("info_gain", model, tokenizer).generate([prompt], **gen).texts[0]
    assert out.getvalue() == f"assistant> {answer}\n"


# ---- lm-evaluation-harness model ----------------------------------------------------------------

@pytest.fixture(scope="module")
def harness(checkpoints):
    pytest.importorskip("lm_eval")
    from infogain.evaluation.lm_eval_model import InfoGainLM

    return {family: InfoGainLM(pretrained=path, device="cpu", candidate_number=2, mc_num=4, threads=1,
                               **({"block_length": BLOCK[family]} if family == "sdar_moe" else {}))
            for family, path in checkpoints.items()}


def _requests(kind, args):
    from lm_eval.api.instance import Instance

    return [Instance(kind, {}, a, i, ("t", i, 1)) for i, a in enumerate(args)]


@pytest.mark.parametrize("family", FAMILIES)
def test_harness_generate_until(harness, loaded, family):
    """SDAR-MoE: a 3-token request is one 3-token block (its blocks count from the generation's start);
    Fast-dLLM v2: one whole block of its bd_size 8 (the attention's), cut to max_gen_toks."""
    model, tokenizer = loaded[family]
    lm = harness[family]
    texts = lm.generate_until(_requests("generate_until", [("12*3=", {"until": [], "max_gen_toks": 3})]))
    length = 3 if family == "sdar_moe" else 8
    tokens = make_sampler("info_gain", model, tokenizer).generate(
        [lm.tok_encode("12*3=")], gen_length=length, steps=length, block_length=length, candidate_number=2,
        seed=lm.seed).sequences[0][:3].tolist()
    if tokenizer.eos_token_id in tokens:
        tokens = tokens[:tokens.index(tokenizer.eos_token_id)]
    assert texts == [tokenizer.decode(tokens, skip_special_tokens=True)]


def test_harness_refuses_sdar_moe_loglikelihood(harness):
    lm = harness["sdar_moe"]
    with pytest.raises(ValueError, match="sdar_moe.*generate_until"):
        lm._score(lm.tok_encode("12"), lm.tok_encode("34")[-1:], seed_texts=("a", "b"))


def _block_causal_logprob(model, ids, position, block_length):
    """log p(ids[position] | ids[:position]) with the token masked and nothing after it: the conditional a
    block-wise decoder has when ``position`` is the only masked position of its block (the model's logits
    are aligned: Fast-dLLM v2's token shift is inside them)."""
    canvas = torch.tensor([ids[:position] + [model.config.mask_token_id]])
    logits = model(canvas, block_length=block_length).float()[0, position]
    return torch.log_softmax(logits, dim=-1)[ids[position]].item()


def test_harness_fast_dllm_v2_loglikelihood_is_the_block_wise_chain_rule(harness, loaded):
    """A continuation with one token at the end of a block and one at the start of the next: each block's
    term is exact (one masked token), and the estimate is their sum, each conditioned on everything before
    it. The second term is autoregressive (the token shift: the logit of a block's first position is the
    previous block's last output, which cannot see the block), so it does not depend on what stands at its
    position; the blocks are the model's bd_size (8)."""
    model, _ = loaded["fast_dllm_v2"]
    lm = harness["fast_dllm_v2"]
    context = lm.tok_encode("1234567")   # 7 tokens: the first continuation token ends block 0
    assert len(context) == 7, context
    continuation = lm.tok_encode("89")[-2:]
    ids = context + continuation
    first, second = (_block_causal_logprob(model, ids, len(context) + i, 8) for i in range(2))
    got, _ = lm._score(context, continuation, seed_texts=("a", "b"))
    assert got == pytest.approx(first + second, abs=1e-4)
    # At the block start, the token in its own position is invisible to its logit.
    other = torch.tensor([ids[:len(context) + 1] + [continuation[1]]])
    logits = model(other, block_length=8).float()[0, -1]
    assert torch.log_softmax(logits, dim=-1)[continuation[1]].item() == pytest.approx(second, abs=1e-5)
    # Both tokens masked together (the second then predicted from a masked first) differs: the later block's
    # term is conditioned on the clean earlier block.
    joint = torch.tensor([context + [model.config.mask_token_id] * 2])
    logprobs = torch.log_softmax(model(joint, block_length=8).float()[0, len(context):], dim=-1)
    assert abs(got - sum(logprobs[i, t].item() for i, t in enumerate(continuation))) > 1e-3


def test_harness_fast_dllm_v2_greedy_flag_across_a_block_boundary(harness, loaded):
    """Greedy decoding of a continuation over positions 7 (end of block 0) and 8 (start of block 1): the
    first block's token first, then the next block's from the state before it; the flag is True for those
    tokens and False when the second is the runner-up."""
    model, _ = loaded["fast_dllm_v2"]
    lm = harness["fast_dllm_v2"]
    mask = model.config.mask_token_id
    context = lm.tok_encode("1234567")
    assert len(context) == 7

    def ranked(canvas, position):
        scores = model(torch.tensor([canvas]), block_length=8).float()[0, position]
        scores[mask] = float("-inf")
        return scores.topk(2).indices.tolist()

    first = ranked(context + [mask, mask], 7)[0]
    second, runner_up = ranked(context + [first, mask], 8)
    results = [lm._score(context, [first, t], seed_texts=("c", str(t)))[1] for t in (second, runner_up)]
    assert results == [True, False]


# ---- benchmarks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_bench_random_weights_with_small_config(family, tmp_path, capsys):
    out = tmp_path / "e2e.json"
    block = "4" if family == "sdar_moe" else "8"   # Fast-dLLM v2: its bd_size
    code = bench.main(["--random-weights", PRESET[family], "--config", SMALL[family], "--head-scale", "8",
                       "--dtype", "float32", "--cache", "prefix", "--prompt-length", "12", "--gen-length", "16",
                       "--steps", "16", "--block-length", block, "--candidates", "4", "--repeats", "1",
                       "--threads", "1", "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().out   # the table names the failed configuration
    record = json.loads(out.read_text())
    (row,) = record["rows"]
    assert record["all_tokens_match"] and row["tokens_match"] and row["nfe"] >= 16 // int(block)
    assert record["settings"]["model"] == f"random-weights:{PRESET[family]} ({SMALL[family]}), head weights x8"


def test_bench_config_shrinks_the_moe_and_checks_its_fields():
    args = bench.build_parser().parse_args(["--random-weights", PRESET["sdar_moe"], "--config", SMALL["sdar_moe"]])
    model, _, _ = bench._load_model(args, torch.device("cpu"), torch.float32)
    moe = model.spec.moe
    assert (model.spec.head_dim, moe.num_experts, moe.top_k, moe.score_function) == (16, 8, 2, "softmax")
    bad = bench.build_parser().parse_args(["--random-weights", PRESET["sdar_moe"], "--config",
                                           SMALL["sdar_moe"].replace("num_experts_per_tok=2", "num_experts_per_tok=9")])
    with pytest.raises(ValueError, match="num_experts_per_tok"):
        bench._load_model(bad, torch.device("cpu"), torch.float32)
    fast = bench.build_parser().parse_args(["--random-weights", PRESET["fast_dllm_v2"], "--config",
                                            SMALL["fast_dllm_v2"]])
    model, _, _ = bench._load_model(fast, torch.device("cpu"), torch.float32)
    assert (model.config.block_anchor, model.config.block_length) == ("position", 8)


def test_bench_models_shrinks_both_and_runs():
    spec = importlib.util.spec_from_file_location("bench_models_families",
                                                  os.path.join(ROOT, "benches", "bench_models.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = argparse.Namespace(small=True, length=64, block=8, candidates=2, repeats=1)
    for family in FAMILIES:
        name = PRESET[family]
        assert name in module.ARCHITECTURES
        config = module.small_config(name)
        special = [config[k] for k in ("mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id")]
        assert all(0 <= i < config["vocab_size"] for i in special)   # every special id inside the small vocabulary
        if family == "sdar_moe":   # SDAR-MoE's own routing fields only (no LLaDA2 group fields)
            assert (config["num_experts"], config["num_experts_per_tok"]) == (16, 4) and "n_group" not in config
        rows, used = module.bench_model(name, args, torch.device("cpu"))
        assert [r["mode"] for r in rows] == ["block_causal"] and rows[0]["model"] == f"{name}-small"
        assert rows[0]["speedup"] > 0 and used["vocab_size"] == 4096
