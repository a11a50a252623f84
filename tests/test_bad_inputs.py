"""One table of bad inputs across the package: every case names the exception type and a pattern
that the message must contain -- the name of the offending argument (or option, or tensor).

Sections: ops, ``models.load``, samplers, EIS, command line. A case is ``(id, call, exception,
pattern)``; ``call`` receives a :class:`Context` that builds the tiny models it needs once.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys

import pytest
import torch
from safetensors.torch import save_file

import infogain_kernels as igk

sys.path.insert(0, os.path.dirname(__file__))
from tiny_checkpoints import MASK_ID, VOCAB, tiny_config, tiny_state_dict, write_tiny_checkpoint  # noqa: E402

NAN, INF, NEG_INF = float("nan"), float("inf"), float("-inf")


class UsageError(Exception):
    """A command exited with status 2; the message is what it printed on stderr."""


class Context:
    """Lazily built inputs shared by the cases (one tiny checkpoint folder per test session)."""

    _root = None

    def __init__(self, tmp_path_factory):
        self.factory = tmp_path_factory
        self._cache = {}

    def path(self, name="ckpt"):
        return str(self.factory.mktemp(name))

    def checkpoint(self, arch="llada", **overrides):
        key = ("ckpt", arch, tuple(sorted(overrides.items())))
        if key not in self._cache:
            self._cache[key] = write_tiny_checkpoint(arch, self.path(arch), **overrides)
        return self._cache[key]

    def model(self, arch="llada"):
        if ("model", arch) not in self._cache:
            from infogain import models

            self._cache[("model", arch)] = models.load(self.checkpoint(arch))[0]
        return self._cache[("model", arch)]

    def sampler(self, name="info_gain"):
        from infogain.samplers import make_sampler

        return make_sampler(name, self.model(), gen_length=4, steps=4, block_length=4, candidate_number=2)

    def toy_sampler(self):
        """A sampler with a real tokenizer (the shipped toy model, which has no chat template)."""
        from infogain import models
        from infogain.models import toy_model_path
        from infogain.samplers import make_sampler

        if "toy" not in self._cache:
            self._cache["toy"] = models.load(toy_model_path())
        model, tokenizer = self._cache["toy"]
        return make_sampler("confidence", model, tokenizer, gen_length=4, steps=4, block_length=4)

    def hf_model(self):
        if "hf" not in self._cache:
            from transformers import GPT2Config, GPT2LMHeadModel

            torch.manual_seed(0)
            self._cache["hf"] = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1,
                                                           n_head=2, eos_token_id=49)).eval()
        return self._cache["hf"]

    def eis(self, **kwargs):
        from infogain.eis import ExtendedInferenceSampler

        return ExtendedInferenceSampler(self.hf_model(), None, **{"top_k": 2, "lookahead_steps": 1, **kwargs})

    # Checkpoints with one defect each.
    def broken_checkpoint(self, defect):
        path = self.path(defect)
        config = tiny_config("llada")
        state = tiny_state_dict("llada", config)
        if defect == "missing":
            state.pop("model.transformer.ln_f.weight")
        elif defect == "extra":
            state["model.transformer.extra.weight"] = torch.zeros(2)
        elif defect == "misshaped":
            state["model.transformer.ln_f.weight"] = torch.ones(3)
        elif defect == "remote_code":
            config = {**config, "model_type": "my_model", "architectures": ["MyModel"],
                      "auto_map": {"AutoModel": "modeling_my.MyModel"}}
        with open(os.path.join(path, "config.json"), "w") as fh:
            json.dump(config, fh)
        if defect == "pickle_only":
            torch.save(state, os.path.join(path, "pytorch_model.bin"))
        else:
            save_file(state, os.path.join(path, "model.safetensors"))
        return path


def run_cli(main, argv):
    """Run a command's ``main``; exit status 2 becomes :class:`UsageError` carrying its stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    if code == 2:
        raise UsageError(err.getvalue())
    return code


def _logits(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _with(value, *index):
    x = _logits(2, 3, 11)
    x[index] = value
    return x


def _ops_cases():
    mask = torch.ones(2, 3, dtype=torch.bool)
    valid = torch.ones(3, 11, dtype=torch.bool)
    remaining = torch.ones(2, 3, dtype=torch.bool)
    cost = torch.zeros(2)
    cache, block = torch.zeros(2, 2, 8, 4), torch.ones(2, 2, 3, 4)
    return [
        ("token_stats/logits-list", lambda c: igk.token_stats([[1.0]]), TypeError, "logits"),
        ("token_stats/logits-int", lambda c: igk.token_stats(torch.ones(2, 3, dtype=torch.long)), TypeError, "logits"),
        ("token_stats/logits-0d", lambda c: igk.token_stats(torch.tensor(1.0)), ValueError, "logits"),
        ("token_stats/mask-shape", lambda c: igk.token_stats(_logits(2, 3, 11), mask[:1]), ValueError, "mask"),
        ("token_stats/mask-dtype", lambda c: igk.token_stats(_logits(2, 3, 11), mask.long()), TypeError, "mask"),
        ("token_stats/check_values", lambda c: igk.token_stats(_logits(2, 11), check_values=1), TypeError,
         "check_values"),
        ("token_stats/nan", lambda c: igk.token_stats(_with(NAN, 1, 2, 3)), ValueError, r"logits.*\(1, 2\) contains NaN"),
        ("token_stats/+inf", lambda c: igk.token_stats(_with(INF, 1, 2, 3)), ValueError, r"logits.*contains \+inf"),
        ("token_stats/all-inf", lambda c: igk.token_stats(_with(NEG_INF, 0, 1)), ValueError,
         r"logits.*\(0, 1\) is entirely -inf"),
        ("gumbel_sample/num_samples", lambda c: igk.gumbel_sample(_logits(2, 11), 0, 1.0), ValueError, "num_samples"),
        ("gumbel_sample/temperature-neg", lambda c: igk.gumbel_sample(_logits(2, 11), 2, -1.0), ValueError,
         "temperature"),
        ("gumbel_sample/temperature-inf", lambda c: igk.gumbel_sample(_logits(2, 11), 2, INF), ValueError,
         "temperature"),
        ("gumbel_sample/temperature-str", lambda c: igk.gumbel_sample(_logits(2, 11), 2, "1"), TypeError,
         "temperature"),
        ("gumbel_sample/generator", lambda c: igk.gumbel_sample(_logits(2, 11), 2, 1.0, generator=0), TypeError,
         "generator"),
        ("gumbel_sample/+inf", lambda c: igk.gumbel_sample(_with(INF, 0, 0, 0), 2, 1.0), ValueError,
         r"logits row at position \(0, 0\) contains \+inf"),
        ("gumbel_sample/nan", lambda c: igk.gumbel_sample(_with(NAN, 0, 0, 0), 2, 1.0), ValueError, "contains NaN"),
        ("gumbel_topk/scores-3d", lambda c: igk.gumbel_topk(_logits(2, 3, 11), 2, 2, 1.0, valid=valid), ValueError,
         "scores"),
        ("gumbel_topk/k", lambda c: igk.gumbel_topk(_logits(3, 11), 0, 2, 1.0, valid=valid), ValueError, "k must"),
        ("gumbel_topk/valid-none", lambda c: igk.gumbel_topk(_logits(3, 11), 2, 2, 1.0, valid=None), TypeError,
         "valid"),
        ("gumbel_topk/valid-shape", lambda c: igk.gumbel_topk(_logits(3, 11), 2, 2, 1.0, valid=valid[:2]),
         ValueError, "valid"),
        ("gumbel_topk/nan", lambda c: igk.gumbel_topk(_with(NAN, 0, 1)[0], 2, 2, 1.0, valid=valid), ValueError,
         "scores contain NaN"),
        ("lookahead_objective/next_logits-2d", lambda c: igk.lookahead_objective(_logits(2, 11), remaining, cost),
         ValueError, "next_logits"),
        ("lookahead_objective/remaining-shape",
         lambda c: igk.lookahead_objective(_logits(2, 3, 11), remaining[:, :2], cost), ValueError, "remaining"),
        ("lookahead_objective/variant", lambda c: igk.lookahead_objective(_logits(2, 3, 11), remaining, cost,
                                                                          variant="lookahead"), ValueError, "variant"),
        ("lookahead_objective/cost-missing", lambda c: igk.lookahead_objective(_logits(2, 3, 11), remaining),
         ValueError, "cost"),
        ("lookahead_objective/cost-shape", lambda c: igk.lookahead_objective(_logits(2, 3, 11), remaining,
                                                                             torch.zeros(3)), ValueError, "cost"),
        ("lookahead_objective/cost-inf", lambda c: igk.lookahead_objective(_logits(2, 3, 11), remaining,
                                                                           torch.tensor([0.0, INF])), ValueError,
         "cost must be finite"),
        ("lookahead_objective/+inf", lambda c: igk.lookahead_objective(_with(INF, 1, 0, 2), remaining, cost),
         ValueError, r"next_logits row at position \(1, 0\) contains \+inf"),
        ("topk_logprobs/logits-3d", lambda c: igk.topk_logprobs(_logits(2, 3, 11), 2), ValueError, "logits"),
        ("topk_logprobs/k-too-big", lambda c: igk.topk_logprobs(_logits(2, 11), 12), ValueError, "k must"),
        ("topk_logprobs/top_p", lambda c: igk.topk_logprobs(_logits(2, 11), 2, top_p=0.0), ValueError, "top_p"),
        ("topk_logprobs/+inf", lambda c: igk.topk_logprobs(_with(INF, 0, 1, 2)[0], 2), ValueError,
         r"logits row 1 contains \+inf"),
        ("sample_logprob/mode", lambda c: igk.sample_logprob(_logits(2, 11), mode="beam"), ValueError, "mode"),
        ("sample_logprob/top_p", lambda c: igk.sample_logprob(_logits(2, 11), top_p=1.5), ValueError, "top_p"),
        ("sample_logprob/+inf", lambda c: igk.sample_logprob(_with(INF, 0, 1, 2)[0]), ValueError, r"contains \+inf"),
        ("kv_block_replace/caches-type", lambda c: igk.kv_block_replace(cache, [block], 0), TypeError, "caches"),
        ("kv_block_replace/caches-empty", lambda c: igk.kv_block_replace([], [], 0), ValueError, "caches"),
        ("kv_block_replace/same-cache-twice", lambda c: igk.kv_block_replace([cache, cache], [block, block.clone()], 0),
         ValueError, r"caches\[1\] shares memory with caches\[0\]"),
        ("kv_block_replace/block-in-cache", lambda c: igk.kv_block_replace([cache], [cache[:, :, :3]], 0), ValueError,
         r"blocks\[0\] overlaps"),
        ("kv_block_replace/dst_start", lambda c: igk.kv_block_replace([cache], [block], 6), ValueError, "dst_start"),
        ("kv_block_replace/length", lambda c: igk.kv_block_replace([cache], [block], 0, length=True), TypeError,
         "length"),
        ("kv_block_replace/layout", lambda c: igk.kv_block_replace([cache], [block], 0, layout="bhdt"), ValueError,
         "layout"),
        ("kv_block_replace/dtype", lambda c: igk.kv_block_replace([cache], [block.double()], 0), TypeError,
         r"blocks\[0\]"),
    ]


def _load(*args, **kwargs):
    from infogain import models

    return models.load(*args, **kwargs)


def _models_cases():
    return [
        ("load/nonexistent", lambda c: _load("/nonexistent/model"), ValueError, "path '/nonexistent/model'"),
        ("load/path-type", lambda c: _load(3), TypeError, "path"),
        ("load/no-config", lambda c: _load(c.path("empty")), ValueError, "config.json"),
        ("load/missing-tensor", lambda c: _load(c.broken_checkpoint("missing")), ValueError,
         "missing 1 tensor.*model.transformer.ln_f.weight"),
        ("load/extra-tensor", lambda c: _load(c.broken_checkpoint("extra")), ValueError,
         "unexpected tensor.*model.transformer.extra.weight"),
        ("load/misshaped-tensor", lambda c: _load(c.broken_checkpoint("misshaped")), ValueError,
         r"'model.transformer.ln_f.weight' has shape \(3,\)"),
        ("load/pickle-only", lambda c: _load(c.broken_checkpoint("pickle_only")), ValueError,
         r"only pickle weights \(pytorch_model.bin\)"),
        ("load/remote-code-architecture", lambda c: _load(c.broken_checkpoint("remote_code")), ValueError,
         "config.json does not name a supported architecture.*my_model"),
        ("load/dtype-string", lambda c: _load(c.checkpoint(), dtype="bfloat16"), TypeError, "dtype"),
        ("load/dtype-int", lambda c: _load(c.checkpoint(), dtype=torch.int64), TypeError, "dtype"),
        ("load/device-string", lambda c: _load(c.checkpoint(), device="gpu"), ValueError, "device"),
        pytest.param("load/device-cuda-without-cuda", lambda c: _load(c.checkpoint(), device="cuda"), ValueError,
                     "device 'cuda' is not available",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")),
        ("load/mask_token_id", lambda c: _load(c.checkpoint(mask_token_id=VOCAB)), ValueError, "mask_token_id"),
    ]


def _generate(c, prompts=((2, 3, 4),), **options):
    return c.sampler().generate([list(p) for p in prompts] if not isinstance(prompts, (str, torch.Tensor))
                                else prompts, **options)


def _sampler_cases():
    from infogain.samplers import make_sampler

    return [
        ("make_sampler/name", lambda c: make_sampler("beam", c.model()), ValueError, "sampler name 'beam'"),
        ("sampler/mask_id", lambda c: make_sampler("confidence", c.model(), mask_id=-1), TypeError, "mask_id"),
        ("sampler/bad-default", lambda c: make_sampler("confidence", c.model(), threshold=2.0), ValueError, "threshold"),
        ("generate/gen_length", lambda c: _generate(c, gen_length=0), ValueError, "gen_length"),
        ("generate/block_length", lambda c: _generate(c, gen_length=6, block_length=4), ValueError,
         r"gen_length \(6\) must be a multiple of block_length"),
        ("generate/steps", lambda c: _generate(c, gen_length=8, steps=1), ValueError, "steps"),
        ("generate/threshold", lambda c: _generate(c, threshold=0.0), ValueError, "threshold"),
        ("generate/temperature", lambda c: _generate(c, temperature=-0.5), ValueError, "temperature"),
        ("generate/variant", lambda c: _generate(c, variant="greedy"), ValueError, "variant"),
        ("generate/cache", lambda c: _generate(c, cache="paged"), ValueError, "cache"),
        ("generate/seed", lambda c: _generate(c, seed="0"), TypeError, "seed"),
        ("generate/chat-flag", lambda c: _generate(c, chat=1), TypeError, "chat"),
        ("generate/unknown-option", lambda c: _generate(c, top_k=3), TypeError, "top_k"),
        ("generate/prompts-empty", lambda c: _generate(c, prompts=[[]]), ValueError, r"prompts\[0\] is empty"),
        ("generate/prompts-float", lambda c: _generate(c, prompts=torch.ones(1, 3)), TypeError, "prompts"),
        ("generate/prompts-vocab", lambda c: _generate(c, prompts=[[2, VOCAB]]), ValueError,
         r"prompts\[0\] contains a token id >= the model's vocab_size"),
        ("generate/prompts-mask-token", lambda c: _generate(c, prompts=[[2, 3], [4, MASK_ID, 5]]), ValueError,
         rf"prompts\[1\] contains the mask token id {MASK_ID} at position 1"),
        ("generate/string-without-tokenizer", lambda c: _generate(c, prompts="hi"), ValueError, "tokenizer"),
        ("generate/too-long", lambda c: _generate(c, gen_length=256, steps=64), ValueError, "gen_length"),
        ("generate/chat-token-ids", lambda c: _generate(c, chat=True), ValueError, "chat=True"),
        ("generate/chat-no-template", lambda c: c.toy_sampler().generate(["12*3="], chat=True), ValueError,
         "chat=True but the tokenizer has no chat template"),
    ]


def _eis_generate(c, ids, **kwargs):
    return c.eis().generate(ids, **{"max_new_tokens": 2, **kwargs})


def _eis_cases():
    ids = torch.tensor([[1, 2, 3]])
    return [
        ("eis/model", lambda c: __import__("infogain.eis").eis.ExtendedInferenceSampler(None), TypeError, "model"),
        ("eis/top_k", lambda c: c.eis(top_k=0), ValueError, "top_k"),
        ("eis/lookahead_steps", lambda c: c.eis(lookahead_steps=-1), ValueError, "lookahead_steps"),
        ("eis/discount_factor", lambda c: c.eis(discount_factor=1.5), ValueError, "discount_factor"),
        ("eis/temperature", lambda c: c.eis(temperature=INF), ValueError, "temperature"),
        ("eis/top_p", lambda c: c.eis(top_p=0.0), ValueError, "top_p"),
        ("eis/rollout_mode", lambda c: c.eis(rollout_mode="beam"), ValueError, "rollout_mode"),
        ("eis/use_cache", lambda c: c.eis(use_cache="yes"), TypeError, "use_cache"),
        ("eis/input_ids-type", lambda c: _eis_generate(c, [[1, 2]]), TypeError, "input_ids"),
        ("eis/input_ids-float", lambda c: _eis_generate(c, ids.float()), ValueError, "input_ids"),
        ("eis/input_ids-vocab", lambda c: _eis_generate(c, torch.tensor([[1, 50]])), ValueError,
         r"input_ids must hold token ids in \[0, 50\)"),
        ("eis/input_ids-negative", lambda c: _eis_generate(c, torch.tensor([[-1, 2]])), ValueError, "input_ids"),
        ("eis/positions", lambda c: _eis_generate(c, ids, max_new_tokens=14), ValueError,
         "max_new_tokens.*max_position_embeddings"),
        ("eis/max_new_tokens-missing", lambda c: c.eis().generate(ids), ValueError, "max_new_tokens"),
        ("eis/max_new_tokens-negative", lambda c: _eis_generate(c, ids, max_new_tokens=-1), ValueError,
         "max_new_tokens"),
        ("eis/attention_mask-shape", lambda c: _eis_generate(c, ids, attention_mask=torch.ones(1, 2)), ValueError,
         "attention_mask"),
        ("eis/attention_mask-right-padding", lambda c: _eis_generate(c, ids, attention_mask=torch.tensor([[1, 1, 0]])),
         ValueError, "attention_mask"),
        ("eis/unknown-kwarg", lambda c: _eis_generate(c, ids, num_beams=2), TypeError, "num_beams"),
    ]


def _demo(argv):
    """The demo on one problem; a case's own ``--out`` (later on the line) wins over the scratch one,
    so a case that is wrongly accepted never writes into the working directory."""
    import tempfile

    from infogain.apps import demo

    with tempfile.TemporaryDirectory() as scratch:
        return run_cli(demo.main, ["--out", scratch, "--no-progress", "--num-samples", "1"] + argv)


def _bench(argv):
    from infogain.apps import bench

    return run_cli(bench.main, argv)


def _eval(argv):
    from infogain.evaluation import runner

    return run_cli(runner.main, argv)


def _chat(argv):
    from infogain.apps import chat

    return run_cli(lambda a: chat.main(a, stdin=io.StringIO("")), argv)


def _cli(argv):
    from infogain.apps import cli

    return run_cli(cli.main, argv)


def _cli_cases():
    return [
        ("cli/unknown-command", lambda c: _cli(["train"]), UsageError, "invalid choice: 'train'"),
        ("demo/samplers-empty-entry", lambda c: _demo(["--samplers", "info_gain,,confidence"]), UsageError,
         "--samplers has an empty entry"),
        ("demo/samplers-unknown", lambda c: _demo(["--samplers", "beam"]), UsageError, "--samplers: unknown beam"),
        ("demo/tasks-empty", lambda c: _demo(["--tasks", ","]), UsageError, "--tasks must name at least one"),
        ("demo/num-samples", lambda c: _demo(["--num-samples", "0"]), UsageError, "--num-samples"),
        ("demo/out-unwritable", lambda c: _demo(["--out", "/proc/nope"]), UsageError, "--out '/proc/nope'"),
        ("demo/out-is-a-file", lambda c: _demo(["--out", __file__]), UsageError, "--out"),
        ("demo/device-name", lambda c: _demo(["--device", "gpu"]), UsageError, "--device 'gpu'"),
        pytest.param("demo/device-cuda", lambda c: _demo(["--device", "cuda"]), UsageError,
                     "--device 'cuda': CUDA is not available",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")),
        ("demo/model-missing", lambda c: _demo(["--model", "/nonexistent"]), UsageError, "--model '/nonexistent'"),
        ("demo/cache", lambda c: _demo(["--cache", "paged"]), UsageError, "--cache"),
        ("bench/samplers-empty-entry", lambda c: _bench(["--samplers", "info_gain,,lookum"]), UsageError,
         "--samplers has an empty entry"),
        ("bench/samplers-unknown", lambda c: _bench(["--samplers", "beam"]), UsageError, "--samplers"),
        ("bench/cache", lambda c: _bench(["--cache", "none,paged"]), UsageError, "--cache"),
        ("bench/device-name", lambda c: _bench(["--device", "gpu"]), UsageError, "--device 'gpu'"),
        ("bench/out-unwritable", lambda c: _bench(["--out", "/proc/nope/e2e.json"]), UsageError, "--out"),
        ("bench/repeats", lambda c: _bench(["--repeats", "0"]), UsageError, "--repeats"),
        ("bench/model-missing", lambda c: _bench(["--model", "/nonexistent"]), UsageError, "/nonexistent"),
        ("bench/config-without-random-weights", lambda c: _bench(["--config", "d_model=8"]), UsageError, "--config"),
        ("bench/update-results-and-out", lambda c: _bench(["--update-results", "--out", "x.json"]), UsageError,
         "--out"),
        ("eval/config-missing", lambda c: _eval(["--config", "nosuch"]), UsageError, "--config 'nosuch'"),
        ("eval/task-unknown", lambda c: _eval(["--task", "nosuch", "--model", "toy"]), UsageError, "task: unknown"),
        ("eval/gen-length-not-int", lambda c: _eval(["--task", "toy_multiplication", "--model", "toy",
                                                     "--gen_length", "abc"]), UsageError, "gen_length"),
        ("eval/compare-not-a-run", lambda c: _eval(["--compare", "/nonexistent1", "/nonexistent2"]), UsageError,
         "/nonexistent1"),
        ("chat/model-missing", lambda c: _chat(["--model", "/nonexistent"]), UsageError, "--model '/nonexistent'"),
        ("chat/device-name", lambda c: _chat(["--model", "/nonexistent", "--device", "gpu"]), UsageError,
         "--device 'gpu'"),
        ("chat/gen-length", lambda c: _chat(["--model", "/nonexistent", "--gen-length", "0"]), UsageError,
         "gen_length"),
    ]


CASES = _ops_cases() + _models_cases() + _sampler_cases() + _eis_cases() + _cli_cases()


def _case_id(case):
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return Context(tmp_path_factory)


@pytest.mark.parametrize("name, call, exception, pattern", CASES, ids=[_case_id(case) for case in CASES])
def test_bad_input_raises_naming_the_argument(name, call, exception, pattern, context):
    with pytest.raises(exception, match=pattern):
        call(context)


def test_every_section_is_covered():
    sections = {_case_id(case).split("/")[0] for case in CASES}
    assert {"token_stats", "gumbel_sample", "gumbel_topk", "lookahead_objective", "topk_logprobs",
            "sample_logprob", "kv_block_replace", "load", "generate", "eis", "demo", "bench", "cli"} <= sections
    assert len({_case_id(case) for case in CASES}) == len(CASES)


def test_usage_errors_write_no_output(tmp_path):
    out = tmp_path / "demo-out"
    with pytest.raises(UsageError):
        _demo(["--samplers", "info_gain,,confidence", "--out", str(out)])
    assert not out.exists()
    shutil.rmtree(tmp_path, ignore_errors=True)
