"""The lm-evaluation-harness model ``infogain``: harness runs on local tasks with the shipped toy
model (generate_until and loglikelihood), stop strings, chat templates, the Monte-Carlo estimator
against exact enumeration, and EIS for a causal LM."""
import glob
import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from infogain import models  # noqa: E402
from infogain.models import toy_model_path  # noqa: E402
from infogain.evaluation.lm_eval_model import InfoGainLM, cut_at_stop_strings, mc_loglikelihood  # noqa: E402
from infogain.samplers import make_sampler  # noqa: E402
from infogain.tasks import CharCodec, get_task  # noqa: E402
from tiny_checkpoints import toy_with_chat_template  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
TOY = toy_model_path()
SUDOKU = get_task("sudoku")
EXAMPLES = SUDOKU.examples("heldout", 6, seed=3)
GEN_ARGS = "device=cpu,gen_length=16,block_length=16,steps=16,candidate_number=4,add_bos_token=true,seed=7"


@pytest.fixture(scope="module")
def toy():
    return models.load(TOY)


def _write_tasks(folder, examples=EXAMPLES):
    data = folder / "sudoku.jsonl"
    with open(data, "w") as f:
        for ex in examples:
            wrong = ex.target[1:] + ex.target[0]
            f.write(json.dumps({"puzzle": ex.prompt, "solution": ex.target, "choices": [ex.target, wrong]}) + "\n")
    common = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
              "doc_to_text: puzzle\n")  # a column name: a digit template would be parsed as a number
    (folder / "gen.yaml").write_text(
        "task: toy_sudoku_gen\n" + common + "doc_to_target: '{{solution}}'\noutput_type: generate_until\n"
        "generation_kwargs:\n  until: ['=']\n  max_gen_toks: 16\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    (folder / "choice.yaml").write_text(
        "task: toy_sudoku_choice\n" + common + "doc_to_choice: choices\ndoc_to_target: 0\n"
        "target_delimiter: ''\noutput_type: multiple_choice\nmetric_list:\n  - metric: acc\n")


def _evaluate(tmp_path, model_args, tasks, **kwargs):
    _write_tasks(tmp_path)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    return lm_eval.simple_evaluate(model="infogain", model_args=model_args, tasks=tasks, task_manager=manager,
                                   log_samples=True, bootstrap_iters=0, **kwargs)


def test_harness_generate_until_matches_the_sampler(tmp_path, toy):
    model, tokenizer = toy
    out = _evaluate(tmp_path, f"pretrained={TOY},sampler=info_gain,{GEN_ARGS}", ["toy_sudoku_gen"],
                    batch_size=len(EXAMPLES))
    samples = sorted(out["samples"]["toy_sudoku_gen"], key=lambda s: s["doc_id"])
    harness_texts = [s["resps"][0][0] for s in samples]
    # The same prompts through the sampler directly (BOS + the puzzle's characters, one batch).
    codec = CharCodec(tokenizer, SUDOKU.charset)
    sampler = make_sampler("info_gain", model, tokenizer)
    direct = sampler.generate(codec.prompt_ids([ex.prompt for ex in EXAMPLES]), gen_length=16, block_length=16,
                              steps=16, candidate_number=4, seed=7)
    assert harness_texts == [codec.decode(row) for row in direct.sequences]
    # exact_match is the share of responses equal to the target string: it must be exactly that share
    # of the sampler's own texts (a score computed from anything else fails), and the toy model solves
    # some but not all of these puzzles, so both a score of 0 and one of 1 would be caught.
    matches = [t == ex.target for ex, t in zip(EXAMPLES, harness_texts)]
    assert 0 < sum(matches) < len(EXAMPLES), matches
    assert out["results"]["toy_sudoku_gen"]["exact_match,none"] == pytest.approx(sum(matches) / len(EXAMPLES))


def test_harness_loglikelihood_multiple_choice(tmp_path):
    args = f"pretrained={TOY},device=cpu,add_bos_token=true,mc_num=8,mc_batch_size=8,greedy_check=false"
    out = _evaluate(tmp_path, args, ["toy_sudoku_choice"])
    samples = out["samples"]["toy_sudoku_choice"]
    scores = [[r[0][0] for r in s["resps"]] for s in samples]
    assert all(math.isfinite(v) and v < 0 for row in scores for v in row)
    # The toy model prefers each grid's solution to the same grid rotated by one cell.
    assert out["results"]["toy_sudoku_choice"]["acc,none"] >= 0.8
    again = _evaluate(tmp_path, args, ["toy_sudoku_choice"])["samples"]["toy_sudoku_choice"]
    assert [[r[0][0] for r in s["resps"]] for s in again] == scores  # seeded per request


@pytest.mark.slow
def test_data_parallel_under_torchrun_matches_one_process(tmp_path):
    # Two CPU processes (gloo); the harness shards the requests by rank and gathers the samples.
    # The confidence sampler at temperature 0 draws nothing, so outputs do not depend on batching.
    args = f"pretrained={TOY},sampler=confidence,{GEN_ARGS}"
    single = _evaluate(tmp_path, args, ["toy_sudoku_gen"], batch_size=2)["samples"]["toy_sudoku_gen"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "infogain", "lm-eval",
               "--tasks", "toy_sudoku_gen", "--include_path", str(tmp_path), "--model_args", args,
               "--batch_size", "2", "--output_path", str(tmp_path / "out"), "--log_samples"]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    (path,) = glob.glob(str(tmp_path / "out" / "*" / "samples_toy_sudoku_gen_*.jsonl"))
    with open(path) as f:
        parallel = {s["doc_id"]: s["resps"][0][0] for s in map(json.loads, f)}
    assert parallel == {s["doc_id"]: s["resps"][0][0] for s in single}


def _requests(kind, args):
    return [Instance(kind, {}, a, i, ("t", i, 1)) for i, a in enumerate(args)]


def test_stop_strings_max_gen_toks_and_temperature_override(toy):
    lm = InfoGainLM(pretrained=TOY, device="cpu", sampler="confidence", add_bos_token=True, block_length=4)
    prompt = EXAMPLES[0].prompt
    full, cut, short = lm.generate_until(_requests("generate_until", [
        (prompt, {"until": [], "max_gen_toks": 16}),
        (prompt, {"until": ["3", "4"], "max_gen_toks": 16}),
        (prompt, {"until": [], "max_gen_toks": 5})]))
    assert len(full) == 16
    assert cut == cut_at_stop_strings(full, ["3", "4"]) and "3" not in cut and "4" not in cut
    assert len(short) == 5  # generated with gen_length 8 (a multiple of block_length 4), cut to 5 tokens
    assert cut_at_stop_strings("ab=cd", ["", "=", "c"]) == "ab"
    sampled = lm.generate_until(_requests("generate_until", [(prompt, {"max_gen_toks": 16, "do_sample": True,
                                                                       "temperature": 5.0})] * 4))
    assert len(set(sampled)) > 1  # the request's temperature replaced the default 0


def test_chat_template(tmp_path):
    plain = InfoGainLM(pretrained=TOY, device="cpu")
    with pytest.raises(ValueError, match="no chat template.*apply_chat_template"):
        plain.apply_chat_template([{"role": "user", "content": "1234"}])
    folder = toy_with_chat_template(tmp_path / "toy_chat")
    out = _evaluate(tmp_path, f"pretrained={folder},sampler=info_gain,{GEN_ARGS}", ["toy_sudoku_gen"],
                    batch_size=len(EXAMPLES), apply_chat_template=True)
    chat_texts = [s["resps"][0][0] for s in sorted(out["samples"]["toy_sudoku_gen"], key=lambda s: s["doc_id"])]
    no_chat = _evaluate(tmp_path, f"pretrained={TOY},sampler=info_gain,{GEN_ARGS}", ["toy_sudoku_gen"],
                        batch_size=len(EXAMPLES))
    # The template renders BOS + the puzzle: exactly the plain prompt with add_bos_token.
    assert chat_texts == [s["resps"][0][0] for s in sorted(no_chat["samples"]["toy_sudoku_gen"],
                                                           key=lambda s: s["doc_id"])]


def _exact_masked_bound(logits_fn, context, continuation, mask_id):
    """E over l ~ U{1..L} and a uniform l-subset of (L / l) * sum of masked log-probs, by enumeration."""
    length = len(continuation)
    total = 0.0
    for count in range(1, length + 1):
        subsets = list(itertools.combinations(range(length), count))
        for subset in subsets:
            ids = list(context) + [mask_id if i in subset else t for i, t in enumerate(continuation)]
            logprobs = torch.log_softmax(logits_fn(torch.tensor([ids]))[0], dim=-1)
            value = sum(logprobs[len(context) + i, continuation[i]].item() for i in subset)
            total += value * length / count / len(subsets) / length
    return total


def test_mc_estimator_is_unbiased_against_enumeration(toy):
    model, tokenizer = toy
    logits_fn = lambda ids: model(ids).float()  # noqa: E731
    codec = CharCodec(tokenizer, SUDOKU.charset)
    context = [codec.bos_token_id] + codec.encode(EXAMPLES[1].prompt)
    continuation = codec.encode(EXAMPLES[1].target[:4])
    mask_id = model.config.mask_token_id
    exact = _exact_masked_bound(logits_fn, context, continuation, mask_id)
    # One masked token: the estimator is exact whatever the draws.
    single = mc_loglikelihood(logits_fn, context, continuation[:1], mask_id, 3, 2, torch.Generator().manual_seed(0))
    assert single == pytest.approx(_exact_masked_bound(logits_fn, context, continuation[:1], mask_id), abs=1e-4)
    estimates = [mc_loglikelihood(logits_fn, context, continuation, mask_id, 64, 64,
                                  torch.Generator().manual_seed(s)) for s in range(20)]
    mean = sum(estimates) / len(estimates)
    spread = (sum((e - mean) ** 2 for e in estimates) / (len(estimates) - 1)) ** 0.5
    assert abs(mean - exact) < 4 * spread / len(estimates) ** 0.5 + 1e-4


def test_greedy_check_and_loglikelihood_rolling(toy):
    model, tokenizer = toy
    lm = InfoGainLM(pretrained=TOY, device="cpu", add_bos_token=True, mc_num=4)
    codec = CharCodec(tokenizer, SUDOKU.charset)
    prompt = EXAMPLES[2].prompt
    masked = [codec.bos_token_id] + codec.encode(prompt) + [model.config.mask_token_id] * 16
    ids = torch.tensor([masked])
    for _ in range(16):  # confidence-first unmasking, written out
        probs = torch.softmax(model(ids)[0, -16:].float().index_fill(1, torch.tensor([3]), -1e9), dim=-1)
        conf, tok = probs.max(dim=-1)
        conf[ids[0, -16:] != 3] = -1
        ids[0, -16 + int(conf.argmax())] = tok[int(conf.argmax())]
    greedy = codec.decode(ids[0, -16:])
    (_, is_greedy), (_, not_greedy) = lm.loglikelihood(_requests("loglikelihood", [
        (prompt, greedy), (prompt, greedy[::-1] if greedy[::-1] != greedy else "1111222233334444")]))
    assert is_greedy and not not_greedy
    (rolling,) = lm.loglikelihood_rolling(_requests("loglikelihood_rolling", [("12341234",)]))
    assert math.isfinite(rolling) and rolling < 0


def test_model_args_win_over_the_harness_options():
    lm = InfoGainLM.create_from_arg_string(f"pretrained={TOY},device=cpu,threshold=0.5",
                                           {"device": "cuda:3", "batch_size": 4, "max_batch_size": None})
    assert lm.device == torch.device("cpu") and lm.batch_size == 4 and lm.options["threshold"] == 0.5


def test_cpu_threads_follow_the_package_policy(monkeypatch):
    """threads=N sets torch's thread count; without it $INFOGAIN_THREADS, else the free cores shared
    among the machine's processes of the run."""
    from infogain._runtime import threads as _threads

    before = torch.get_num_threads()
    try:
        InfoGainLM(pretrained=TOY, device="cpu", threads=2)
        assert torch.get_num_threads() == 2
        monkeypatch.delenv("INFOGAIN_THREADS", raising=False)
        monkeypatch.setattr(_threads, "free_cores", lambda: 2)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")   # two processes of the run on this machine
        InfoGainLM(pretrained=TOY, device="cpu")
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("INFOGAIN_THREADS", "2")
        InfoGainLM(pretrained=TOY, device="cpu")
        assert torch.get_num_threads() == 2
        with pytest.raises(ValueError, match="threads"):
            InfoGainLM(pretrained=TOY, device="cpu", threads=0)
    finally:
        torch.set_num_threads(before)


def test_bad_arguments():
    with pytest.raises(ValueError, match="pretrained"):
        InfoGainLM()
    with pytest.raises(ValueError, match="sampler"):
        InfoGainLM(pretrained=TOY, sampler="nope")
    with pytest.raises(ValueError, match="sampler=eis"):
        InfoGainLM(pretrained=TOY, sampler="eis")
    with pytest.raises(ValueError, match="unknown model argument.*lookahead_steps"):
        InfoGainLM(pretrained=TOY, lookahead_steps=2)
    with pytest.raises(ValueError, match="candidate_number must be an integer"):
        InfoGainLM(pretrained=TOY, candidate_number="many")
    with pytest.raises(ValueError, match="threshold"):
        InfoGainLM(pretrained=TOY, threshold=1.5)
    with pytest.raises(ValueError, match="dtype"):
        InfoGainLM(pretrained=TOY, dtype="float64")


def test_diffusion_checkpoints_load_through_load_generator(monkeypatch):
    import infogain.evaluation

    seen = []

    def refuse(config):
        seen.append(dict(config))
        raise ValueError("not loaded")

    monkeypatch.setattr(infogain.evaluation, "load_generator", refuse)
    for dtype, expected in (("auto", "checkpoint"), ("float16", "float16")):
        with pytest.raises(ValueError, match="not loaded"):
            InfoGainLM(pretrained=TOY, device="cpu", dtype=dtype, sampler="margin")
        assert seen.pop() == {"model": TOY, "sampler": "margin", "device": "cpu", "dtype": expected}


@pytest.fixture(scope="module")
def causal_checkpoint(tmp_path_factory, toy):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = toy
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_harness_eis_on_a_causal_lm(tmp_path, causal_checkpoint):
    from transformers import AutoModelForCausalLM

    from infogain.eis import ExtendedInferenceSampler

    args = f"pretrained={causal_checkpoint},device=cpu,lookahead_steps=2,top_k=3,add_bos_token=true"
    out = _evaluate(tmp_path, args, ["toy_sudoku_gen", "toy_sudoku_choice"], batch_size=3)
    model = AutoModelForCausalLM.from_pretrained(causal_checkpoint).eval()
    tokenizer = InfoGainLM(pretrained=causal_checkpoint, device="cpu").tokenizer
    codec = CharCodec(tokenizer, SUDOKU.charset)
    for sample in out["samples"]["toy_sudoku_gen"]:
        ids = codec.prompt_ids([sample["doc"]["puzzle"]])
        eis = ExtendedInferenceSampler(model, tokenizer, lookahead_steps=2, top_k=3, temperature=0.0)
        tokens = eis.generate(ids, max_new_tokens=16, eos_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[:tokens.index(tokenizer.eos_token_id)]
        expected = tokenizer.decode(tokens, skip_special_tokens=True).split("=")[0]
        assert sample["resps"][0][0] == expected
    # Exact log-likelihood: the sum of the continuation's next-token log-probabilities.
    sample = out["samples"]["toy_sudoku_choice"][0]
    context = [tokenizer.bos_token_id] + codec.encode(sample["doc"]["puzzle"])
    continuation = codec.encode(sample["doc"]["choices"][0])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([context + continuation])).logits[0], dim=-1)
    expected = sum(logprobs[len(context) - 1 + i, t].item() for i, t in enumerate(continuation))
    assert sample["resps"][0][0][0] == pytest.approx(expected, abs=1e-4)
