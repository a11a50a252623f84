"""lm-evaluation-harness model ``infogain``: the package's samplers behind the harness's LM interface.

Importing this module registers the model with the harness (it needs ``lm-eval``;
``import infogain`` does not). Run it with the harness's own CLI through
``python -m infogain lm-eval`` (:mod:`infogain.apps.lm_eval`), or from Python::

    import lm_eval, infogain.evaluation.lm_eval_model  # registers "infogain"
    lm_eval.simple_evaluate(model="infogain", model_args="pretrained=PATH,sampler=info_gain,cache=dual",
                            tasks=["gsm8k"])

Model arguments (``--model_args key=value,...``):

``pretrained`` (required)
    Local checkpoint folder (``toy``: the shipped toy model; ``NAME``: ``./model/NAME`` when it
    exists, as in eval and chat). A diffusion checkpoint (LLaDA / MMaDA, Dream, SDAR / TraDo,
    LLaDA2.x, SDAR-MoE, Fast-dLLM v2; :mod:`infogain.models`) runs a diffusion sampler; any other
    transformers causal LM (safetensors, no remote code) runs the EIS sampler (:mod:`infogain.eis`).
``sampler``
    One of :data:`infogain.samplers.SAMPLERS`, a model's own decoder
    (:data:`infogain.samplers.MODEL_DECODERS`: ``llada2_threshold``, ``llada21_edit``,
    ``fast_dllm_v2``) or ``eis``; default ``info_gain`` for diffusion checkpoints and
    ``eis`` for causal LMs.
``device``, ``dtype``, ``batch_size``
    Torch device (default: CUDA when available; under ``accelerate launch`` the process's device;
    a CUDA device without CUDA is an error), ``auto`` / ``float32`` / ``bfloat16`` / ``float16``
    (``auto``: the checkpoint's dtype), prompts per ``generate`` call (default 8; ``auto`` means
    the default). A value in ``--model_args`` wins over the harness's ``--device`` / ``--batch_size``.
Diffusion generation options
    Every field of :class:`infogain.samplers.GenerateOptions` (``gen_length``,
    ``steps``, ``block_length``, ``candidate_number``, ``position_temperature``,
    ``threshold``, ``temperature``, ``variant``, ``cache``, ``parallel_bypass``,
    ``eos_penalty``, ``stop_at_eos``, ``lookahead_eos_fill``, ``seed``, ...).
    ``gen_length`` defaults to the request's ``max_gen_toks`` (rounded up to a multiple of
    ``block_length``; a shorter generation makes ``block_length`` equal to it, except on LLaDA2.x
    and Fast-dLLM v2, whose block length is their attention's and is kept: the generation is
    rounded up to one block) and ``steps`` to ``gen_length`` (one token per step). The output is
    always cut to ``max_gen_toks`` tokens, then at the first EOS, then at the first of the
    request's stop strings (``until``). A request's ``temperature`` / ``do_sample`` override the
    ``temperature`` argument.
A model's own decoder's options
    Its own (``option_names``; e.g. ``steps``, ``minimal_topk``, ``top_k`` for
    ``llada2_threshold``, ``sub_block_length``, ``cache=none|block|sub_block`` for
    ``fast_dllm_v2``) with its defaults, typed by :func:`decoder_option_types`; one it
    does not take (``candidate_number``, ...) is an error naming it. Checked when the
    decoder is made for the model (a model it does not fit is refused in its own words),
    before the first request. ``gen_length`` defaults to ``max_gen_toks`` (any length);
    ``steps`` / ``block_length`` keep the decoder's defaults unless given.
EIS options
    ``lookahead_steps``, ``discount_factor``, ``top_k``, ``top_p``,
    ``rollout_mode``, ``use_cache``, ``temperature`` (see
    :class:`infogain.eis.ExtendedInferenceSampler`).
Log-likelihood options
    ``mc_num`` (Monte-Carlo samples per request, default 128), ``mc_batch_size``
    (masked copies per forward, default 32), ``greedy_check`` (default True).
``threads``
    Torch CPU threads of this process (default: the package's policy,
    :mod:`infogain._runtime.threads`: ``$INFOGAIN_THREADS``, else 1 for tiny work, else
    this process's share of the free physical cores).
``add_bos_token``
    Prepend the tokenizer's BOS token when its encoding does not (default False).
    Chat-templated prompts never get one added: the template holds it.

Log-likelihood (:mod:`infogain.evaluation.likelihood`, whatever the sampler): exact for causal LMs;
for diffusion LMs LLaDA's Monte-Carlo masked estimator (each request seeded from ``seed`` and its text)
and ``is_greedy`` from confidence-first greedy unmasking (``greedy_check=False``: False, no forwards);
``loglikelihood_rolling`` scores the rolling windows with them. LLaDA2.x and Fast-dLLM v2 (blocks
counted from position 0; the ``block_length`` argument, else the model's): block by block, each
block's estimate given everything before it. SDAR and SDAR-MoE (blocks counted from the generation's
start) are refused.

Data parallelism: under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` >
1) the rank, world size and device come from ``accelerate.Accelerator``; the
harness shards the requests and gathers the results through this model's
``all_gather`` / ``gather_object`` / ``barrier``.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from infogain_kernels._validation import check_positive_int

from .. import models
from .._runtime import threads as _threads
from .likelihood import causal_score, diffusion_score, mc_loglikelihood, request_seed  # noqa: F401 (re-export)
from .lm_eval_args import (argument_value, decoder_option_types,  # noqa: F401 (re-export)
                           is_diffusion_checkpoint, sampler_options)
from ..samplers import MODEL_DECODERS, SAMPLERS, GenerateOptions, make_sampler

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 8
def _distributed():
    """The ``accelerate.Accelerator`` of a multi-process launch, else None (single process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    # Without CUDA, Accelerator() reports a single process; cpu=True makes it join the gloo group.
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    return accelerator if accelerator.num_processes > 1 else None


def cut_at_stop_strings(text: str, until: Sequence[str]) -> str:
    """``text`` up to (excluding) the earliest occurrence of any non-empty stop string."""
    cut = len(text)
    for stop in until:
        if stop:
            index = text.find(stop)
            if index != -1:
                cut = min(cut, index)
    return text[:cut]


@register_model("infogain")
class InfoGainLM(LM):
    """The harness model (see the module docstring for the arguments)."""

    def __init__(self, pretrained: Optional[str] = None, sampler: Optional[str] = None, device=None,
                 dtype: str = "auto", batch_size=None, max_batch_size=None, mc_num: int = 128,
                 mc_batch_size: int = 32, greedy_check: bool = True, add_bos_token: bool = False,
                 max_length: Optional[int] = None, threads: Optional[int] = None, **options):
        super().__init__()
        if not pretrained or not isinstance(pretrained, str):
            raise ValueError("model argument pretrained (a local checkpoint folder, or toy) is required")
        from .generation import resolve_device, resolve_model_path

        try:   # toy and ./model/<name> as eval and chat read them
            pretrained = resolve_model_path(pretrained)
        except ValueError as exc:
            raise ValueError(f"model argument pretrained={pretrained!r}: {exc}") from None
        diffusion = is_diffusion_checkpoint(pretrained)
        if sampler is None:
            sampler = "info_gain" if diffusion else "eis"
        names = SAMPLERS + tuple(MODEL_DECODERS) + ("eis",)
        if sampler not in names:
            raise ValueError(f"model argument sampler must be one of {names}, got {sampler!r}")
        if diffusion == (sampler == "eis"):
            kind = "a diffusion LM checkpoint" if diffusion else "not a diffusion LM checkpoint (a causal LM)"
            raise ValueError(f"pretrained={pretrained!r} is {kind}: use sampler=eis for causal LMs and a "
                             f"diffusion sampler ({', '.join(names[:-1])}) for the diffusion LMs of infogain.models")
        self.diffusion = diffusion
        self.sampler_name = sampler
        self.decoder = sampler in MODEL_DECODERS
        self.batch_size = DEFAULT_BATCH_SIZE if batch_size is None or str(batch_size).startswith("auto") \
            else argument_value("batch_size", batch_size, int)
        self.mc_num = argument_value("mc_num", mc_num, int)
        self.mc_batch_size = argument_value("mc_batch_size", mc_batch_size, int)
        for name in ("batch_size", "mc_num", "mc_batch_size"):
            check_positive_int(name, getattr(self, name))
        self.greedy_check = argument_value("greedy_check", greedy_check, bool)
        self.add_bos_token = argument_value("add_bos_token", add_bos_token, bool)
        # A model's own decoder: its options' names and types are the decoder's, read once it is made for
        # the model (below); the other samplers' are read and checked now, before the model loads.
        decoder_arguments = options if self.decoder else {}
        self._take_options({} if self.decoder else sampler_options(options, diffusion=diffusion, sampler=sampler))
        if diffusion and not self.decoder:  # fail now, naming the option, rather than at the first request
            gen_length, block_length, steps = self._diffusion_lengths(self.gen_length or 256)
            GenerateOptions(**{**self.options, "gen_length": gen_length, "block_length": block_length,
                               "steps": steps}).validate()
        self._chat_applied = False

        self.accelerator = _distributed()
        if self.accelerator is not None:
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
            device = self.accelerator.device
            self._device = torch.device("cpu") if device.type == "cpu" else device
        else:
            # No device: CUDA when available, else CPU; a CUDA device this machine lacks is an error, as in
            # eval and chat, not a silent run on the CPU.
            try:
                self._device = resolve_device(str(device) if device else "auto")
            except ValueError as exc:
                raise ValueError(f"model argument {exc}") from None
        if dtype not in ("auto", None) and dtype not in models.DTYPES:
            raise ValueError(f"model argument dtype must be auto or one of {sorted(models.DTYPES)}, got {dtype!r}")
        if diffusion:
            from . import load_generator

            # dtype auto: the checkpoint's own.
            loaded = load_generator({"model": pretrained, "sampler": sampler, "device": str(self._device),
                                     "dtype": "checkpoint" if dtype in ("auto", None) else dtype})
            self.model, self.tokenizer, self.sampler = loaded.model, loaded.tokenizer, loaded.sampler
            if self.tokenizer is None:
                raise ValueError(f"pretrained={pretrained!r} has no tokenizer files")
            if self.decoder:
                # load_generator made the decoder for this model (a model it does not fit raised there, in the
                # decoder's words) with eval's defaults; it is made again with its own defaults and the given
                # options, which its constructor checks.
                options = sampler_options(decoder_arguments, diffusion=True, sampler=sampler,
                                          types=decoder_option_types(self.sampler))
                self.sampler = make_sampler(sampler, self.model, self.tokenizer, **options)
                self._take_options(options)
            config_max = self.model.config.max_position_embeddings
        else:
            self.model, self.tokenizer = self._load_causal(pretrained, models.DTYPES.get(dtype))
            config = self.model.config
            from ..eis import ExtendedInferenceSampler

            ExtendedInferenceSampler(self.model, self.tokenizer, **self.options)  # validates the EIS options now
            config_max = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        self.max_length = argument_value("max_length", max_length, int) or config_max or 2048
        if self._device.type == "cpu":
            # The package's thread policy (infogain._runtime.threads), the free cores shared among this machine's
            # processes of the run.
            _threads.apply_threads(argument_value("threads", threads, int),
                                   num_parameters=_threads.model_parameters(self.model),
                                   tokens_per_forward=self.batch_size * self.max_length)
        self.eos_id = self.tokenizer.eos_token_id
        self.prefix_id = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eos_id
        if self.prefix_id is None:
            raise ValueError(f"pretrained={pretrained!r}: the tokenizer has neither a BOS nor an EOS token")

    def _take_options(self, options: dict) -> None:
        """Keep the parsed sampler ``options``: ``seed`` (default 1234) and, for diffusion samplers, the
        lengths a request fills in (``gen_length``; ``steps`` except for a decoder, whose steps are its own
        option) are set apart."""
        seed = options.pop("seed", None)
        self.seed = 1234 if seed is None else seed
        self.gen_length = options.pop("gen_length", None) if self.diffusion else None
        self.steps = options.pop("steps", None) if self.diffusion and not self.decoder else None
        self.options = options

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: Optional[dict] = None) -> "InfoGainLM":
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: Optional[dict] = None) -> "InfoGainLM":
        # --model_args win over the harness's own options (its --device defaults to cuda, also without one).
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**{**extra, **arg_dict})

    def _load_causal(self, path: str, dtype):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                                     use_safetensors=True, dtype=dtype or "auto")
        return model.to(self._device).eval(), tokenizer

    # ------------------------------------------------------------------ distributed

    def all_gather(self, tensor):
        return tensor if self.accelerator is None else self.accelerator.gather(tensor)

    def gather_object(self, obj, dst=0):
        if self.accelerator is None:
            return [obj]
        gathered = [None] * self.world_size if self.rank == dst else None
        torch.distributed.gather_object(obj, gathered, dst=dst)
        return gathered

    def barrier(self) -> None:
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------ chat template

    @property
    def tokenizer_name(self) -> str:
        return str(self.tokenizer.name_or_path).replace("/", "__")

    def chat_template(self, chat_template=False) -> Optional[str]:
        if not chat_template:
            return None
        template = getattr(self.tokenizer, "chat_template", None)
        if isinstance(template, dict):
            name = chat_template if isinstance(chat_template, str) else "default"
            if name not in template:
                raise ValueError(f"apply_chat_template={name!r}: the tokenizer's templates are {sorted(template)}")
            template = template[name]
        if not template:
            raise ValueError(f"the tokenizer of {self.tokenizer_name} has no chat template; run without "
                             "--apply_chat_template (apply_chat_template=False)")
        return template

    def apply_chat_template(self, chat_history: List[Dict[str, str]], add_generation_prompt: bool = True) -> str:
        self.chat_template(True)  # clear error when there is none
        self._chat_applied = True
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt,
                                                  continue_final_message=not add_generation_prompt)

    # ------------------------------------------------------------------ tokens

    def tok_encode(self, text: str) -> List[int]:
        """Token ids of ``text``; chat-templated prompts hold their special tokens already."""
        if self._chat_applied:
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        ids = list(self.tokenizer(text)["input_ids"])
        bos = self.tokenizer.bos_token_id
        if self.add_bos_token and bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        return ids

    def _encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        """(context ids, continuation ids); trailing context spaces move to the continuation."""
        if context == "":
            return [self.prefix_id], self.tok_encode(continuation)[1 if self._leading_bos() else 0:]
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok_encode(context + continuation)
        context_ids = self.tok_encode(context)
        return context_ids, whole[len(context_ids):]

    def _leading_bos(self) -> bool:
        probe = self.tok_encode("")
        return bool(probe) and probe[0] == self.tokenizer.bos_token_id

    # ------------------------------------------------------------------ generate_until

    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        from lm_eval.models.utils import normalize_gen_kwargs
        from tqdm import tqdm

        groups: Dict[str, List[Tuple[int, List[int], dict]]] = {}
        warned = False
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            raw = dict(gen_kwargs or {})
            kwargs = dict(normalize_gen_kwargs(raw, default_max_gen_toks=self.gen_length or 256))
            until = kwargs["until"]
            until = [until] if isinstance(until, str) else list(until or [])
            settings = {"max_gen_toks": int(kwargs["max_gen_toks"]), "until": until}
            ignored = sorted(set(raw) - {"until", "max_gen_toks", "max_new_tokens", "max_tokens",
                                         "max_completion_tokens", "temperature", "do_sample"})
            if ignored and not warned:
                log.warning("generation kwargs %s are not used by the infogain model (set sampler options "
                            "in --model_args)", ignored)
                warned = True
            if "temperature" in raw or "do_sample" in raw:
                settings["temperature"] = float(kwargs["temperature"])
            key = json.dumps({k: v for k, v in settings.items() if k != "until"}, sort_keys=True)
            groups.setdefault(key, []).append((index, self.tok_encode(context), settings))
        results: List[Optional[str]] = [None] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0, desc="generate_until")
        for items in groups.values():
            items.sort(key=lambda item: -len(item[1]))  # similar lengths together: less padding
            for start in range(0, len(items), self.batch_size):
                chunk = items[start:start + self.batch_size]
                settings = chunk[0][2]
                token_rows = self._generate([ids for _, ids, _ in chunk], settings)
                for (index, _, item_settings), tokens in zip(chunk, token_rows):
                    if self.eos_id is not None and self.eos_id in tokens:
                        tokens = tokens[:tokens.index(self.eos_id)]
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                    text = cut_at_stop_strings(text, item_settings["until"])
                    results[index] = text
                    self.cache_hook.add_partial("generate_until", requests[index].args, text)
                bar.update(len(chunk))
        bar.close()
        return results

    def _truncate_left(self, ids: List[int], room: int, what: str) -> List[int]:
        if room < 1:
            raise ValueError(f"{what} leaves no room for the prompt within the model's max length "
                             f"({self.max_length}); lower it or raise max_length")
        if len(ids) > room:
            log.warning("prompt of %d tokens truncated from the left to %d", len(ids), room)
            return ids[-room:]
        return ids

    def _generate(self, prompts: List[List[int]], settings: dict) -> List[List[int]]:
        """At most ``max_gen_toks`` generated token ids per prompt (not cut at EOS)."""
        max_gen_toks = settings["max_gen_toks"]
        if max_gen_toks < 1:
            raise ValueError(f"max_gen_toks must be >= 1, got {max_gen_toks}")
        if not self.diffusion:
            return self._generate_eis(prompts, settings)
        if self.decoder:
            return self._generate_decoder(prompts, settings)
        options = dict(self.options)
        if "temperature" in settings:
            options["temperature"] = settings["temperature"]
        gen_length, block_length, steps = self._diffusion_lengths(max_gen_toks)
        options.pop("block_length", None)
        room = self.max_length - gen_length
        prompts = [self._truncate_left(p, room, f"gen_length {gen_length}") for p in prompts]
        result = self.sampler.generate(prompts, **options, gen_length=gen_length, block_length=block_length,
                                       steps=steps, seed=self.seed)
        return [row[:max_gen_toks] for row in result.sequences.tolist()]

    def _generate_decoder(self, prompts: List[List[int]], settings: dict) -> List[List[int]]:
        """A model's own decoder: its options are its defaults (set at construction); a request sets the
        generation's length (any: the decoders decode the last block whole) and may set the temperature."""
        max_gen_toks = settings["max_gen_toks"]
        gen_length = self.gen_length or max_gen_toks
        block = self._attention_block_length()
        # The decoders' canvas is whole blocks: the prompt and the generation, rounded up to a block's end.
        room = self.max_length // block * block - gen_length
        prompts = [self._truncate_left(p, room, f"gen_length {gen_length}") for p in prompts]
        overrides = {"temperature": settings["temperature"]} if "temperature" in settings else {}
        result = self.sampler.generate(prompts, **overrides, gen_length=gen_length, seed=self.seed)
        return [row[:max_gen_toks] for row in result.sequences.tolist()]

    def _diffusion_lengths(self, max_gen_toks: int) -> Tuple[int, int, int]:
        """(gen_length, block_length, steps) of a request: gen_length defaults to ``max_gen_toks``,
        rounded up to a multiple of the block length (shortened to a shorter generation)."""
        gen_length = self.gen_length or max_gen_toks
        if self._blocks_from_position:
            # LLaDA2's and Fast-dLLM v2's block length is their attention's: a shorter generation is rounded up.
            block_length = self._attention_block_length()
        else:
            block_length = min(self.options.get("block_length", GenerateOptions.block_length), gen_length)
        gen_length = -(-gen_length // block_length) * block_length
        return gen_length, block_length, self.steps or gen_length

    def _generate_eis(self, prompts: List[List[int]], settings: dict) -> List[List[int]]:
        from ..eis import ExtendedInferenceSampler

        max_gen_toks = settings["max_gen_toks"]
        options = dict(self.options)
        options["temperature"] = settings.get("temperature", options.get("temperature", 0.0))
        generator = torch.Generator(device=self._device).manual_seed(self.seed)
        eis = ExtendedInferenceSampler(self.model, self.tokenizer, generator=generator, **options)
        prompts = [self._truncate_left(p, self.max_length - max_gen_toks, f"max_gen_toks {max_gen_toks}")
                   for p in prompts]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.prefix_id
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros(len(prompts), width, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        out = eis.generate(ids.to(self._device), attention_mask=mask.to(self._device), max_new_tokens=max_gen_toks,
                           eos_token_id=self.eos_id, pad_token_id=pad)
        return [row[width:] for row in out.tolist()]

    # ------------------------------------------------------------------ log-likelihood

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> List[Tuple[float, bool]]:
        from tqdm import tqdm

        results = []
        for request in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="loglikelihood"):
            context, continuation = request.args
            context_ids, continuation_ids = self._encode_pair(context, continuation)
            result = self._score(context_ids, continuation_ids, seed_texts=(context, continuation))
            results.append(result)
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
        from tqdm import tqdm

        results = []
        for request in tqdm(requests, disable=disable_tqdm or self.rank != 0, desc="loglikelihood_rolling"):
            (text,) = request.args
            ids = self.tok_encode(text)[1 if self._leading_bos() else 0:]
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                token_list=ids, prefix_token=self.prefix_id, max_seq_len=self.max_length, context_len=1)]
            total = sum(self._score(list(ctx), list(pred), seed_texts=(text, str(i)))[0]
                        for i, (ctx, pred) in enumerate(windows))
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return results

    def _score(self, context_ids: List[int], continuation_ids: List[int], seed_texts) -> Tuple[float, bool]:
        if not continuation_ids:
            return 0.0, True
        if len(continuation_ids) > self.max_length - 1:
            raise ValueError(f"a continuation of {len(continuation_ids)} tokens does not fit the model's max "
                             f"length ({self.max_length})")
        context_ids = context_ids[-(self.max_length - len(continuation_ids)):]
        with torch.inference_mode():
            if not self.diffusion:
                return causal_score(self.model, self._device, context_ids, continuation_ids)
            generator = torch.Generator(device="cpu").manual_seed(request_seed(self.seed, *seed_texts))
            return diffusion_score(self.model, self._device, context_ids, continuation_ids,
                                   block_length=self._attention_block_length() if self._blocks_from_position else None,
                                   num_samples=self.mc_num, batch_size=self.mc_batch_size, generator=generator,
                                   greedy_check=self.greedy_check)

    @property
    def _blocks_from_position(self) -> bool:
        """Whether the model is block-causal with blocks counted from position 0 (LLaDA2.x); False before
        the model is loaded (the constructor's early option check)."""
        config = getattr(getattr(self, "model", None), "config", None)
        if config is None:
            return False
        return bool(getattr(config, "block_causal", False)) and getattr(config, "block_anchor", None) == "position"

    def _attention_block_length(self) -> int:
        """The block length of a model whose blocks count from position 0 (LLaDA2, Fast-dLLM v2): the
        ``block_length`` argument, else the model's own, else generate's default."""
        return int(self.options.get("block_length") or getattr(self.model.config, "block_length", None)
                   or GenerateOptions.block_length)
