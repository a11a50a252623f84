"""``python -m infogain chat``: interactive multi-turn chat with a diffusion LM checkpoint.

Reads one user message per line from standard input and prints the answer
block by block as the sampler decodes it (each block appears when it is
finished; a diffusion LM commits a block's tokens in no left-to-right order).
The conversation goes through the tokenizer's chat template; a tokenizer
without one is an error unless ``--no-chat-template`` is given, which sends
the plain transcript (BOS, then each message's text, in order). When the
conversation outgrows the model's context, its oldest tokens are dropped.

Commands on a line of their own: ``/reset`` (forget the conversation),
``/exit`` or ``/quit`` (or end of input, Ctrl-D). Ctrl-C stops the answer being
decoded and returns to the prompt.

Every option of the sampler's ``generate`` is a flag (``--gen-length``,
``--steps``, ``--block-length``, ``--cache``, ``--temperature``,
``--threshold``, ``--candidate-number``, ``--variant``, ``--seed``, ...);
unset flags keep ``generate``'s defaults, except that a default ``gen_length``
the model cannot hold with a prompt becomes half its positions.

``--sampler`` may also name a model's own decoder (``llada2_threshold``,
``llada21_edit``, ``fast_dllm_v2``; :data:`infogain.samplers.MODEL_DECODERS`): it
takes those of the flags it knows (``--threshold``, ``--steps``, ``--gen-length``,
``--temperature``, ``--seed``, ``--cache`` for ``fast_dllm_v2``, ...) with its own
defaults for the rest, and a flag it does not take (``--candidate-number``, ...) is
an error naming it. A decoder does not stream: its answer is printed when it is done.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional, TextIO

import torch

from ._cliutil import option_type
from ..models import DTYPES
from ..samplers.options import option_types


def _build_parser() -> argparse.ArgumentParser:
    from ..samplers import MODEL_DECODERS, SAMPLERS

    parser = argparse.ArgumentParser(prog="infogain chat", description=__doc__.split("\n\n")[1].replace("\n", " "))
    parser.add_argument("--model", required=True,
                        help="checkpoint folder (LLaDA / Dream / SDAR, with tokenizer); toy = the shipped toy model")
    parser.add_argument("--sampler", default="info_gain", choices=SAMPLERS + tuple(MODEL_DECODERS),
                        help="sampler name, or a model's own decoder (no streaming; its own defaults)")
    parser.add_argument("--no-chat-template", action="store_true",
                        help="send the plain transcript instead of the tokenizer's chat template")
    parser.add_argument("--system", default=None, help="system message (chat template only)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: the checkpoint's dtype")
    options = parser.add_argument_group("sampler options (GenerateOptions; unset = its default)")
    for name, (kind, _) in option_types().items():
        options.add_argument("--" + name.replace("_", "-"), dest=name, default=None, type=option_type(name),
                             metavar=kind.__name__.upper())
    return parser


def generate_options(args: argparse.Namespace) -> dict:
    """The ``generate`` options set on the command line (unset flags and null values keep the defaults)."""
    return {name: getattr(args, name) for name in option_types() if getattr(args, name) is not None}


def _is_decoder(sampler) -> bool:
    """Whether ``sampler`` is a model's own decoder (:data:`infogain.samplers.MODEL_DECODERS`)."""
    from ..samplers import MODEL_DECODERS

    return isinstance(sampler, tuple(MODEL_DECODERS.values()))


def _decoder_setting(sampler, options: dict, name: str):
    """The value a model's own decoder uses for option ``name``: the one in ``options``, else its default
    (None: it has no such option)."""
    if name in options:
        return options[name]
    if name in sampler.defaults:
        return sampler.defaults[name]
    return getattr(getattr(sampler, "options_class", None), name, None)


def _decoder_block(sampler, options: dict) -> int:
    """The block length whose whole blocks make a decoder's canvas (Fast-dLLM v2: the model's; LLaDA2's
    decoders: their ``block_length`` option)."""
    return getattr(sampler, "block_length", None) or _decoder_setting(sampler, options, "block_length") or 1


def decoder_options(sampler, options: dict) -> dict:
    """``options`` (the flags set) for a model's own decoder ``sampler``: a flag it does not take is a
    ValueError naming it; an unset ``gen_length`` is the decoder's default, or half the model's positions
    when that default leaves no room for a prompt (as for the other samplers); a ``gen_length`` that
    leaves none is refused."""
    unknown = sorted(set(options) - set(sampler.option_names))
    if unknown:
        flags = ", ".join("--" + name.replace("_", "-") for name in unknown)
        raise ValueError(f"{flags} ({', '.join(unknown)}): not an option of the {sampler.name} decoder; its "
                         f"options: {', '.join(sorted(set(option_types()) & set(sampler.option_names)))}")
    options = dict(options)
    limit = sampler.max_positions
    if limit is None:
        return options
    if "gen_length" not in options:
        default = _decoder_setting(sampler, options, "gen_length")
        options["gen_length"] = default if default <= limit // 2 else max(1, limit // 2)
    block = _decoder_block(sampler, options)
    if limit // block * block - options["gen_length"] < 1:
        raise ValueError(f"gen_length ({options['gen_length']}) leaves no room for a prompt in the model's {limit} "
                         f"positions (the {sampler.name} decoder's canvas is whole blocks of {block})")
    return options


class _BlockPrinter:
    """``on_block`` callback: prints the answer's new text after each decoded block (for a sampler without
    ``on_block``, only :meth:`finish` is called: the whole answer at once)."""

    def __init__(self, tokenizer, mask_id: int, eos_id: Optional[int], out: TextIO):
        self.tokenizer, self.mask_id, self.eos_id, self.out = tokenizer, mask_id, eos_id, out
        self.shown = ""

    def text(self, tokens: List[int]) -> str:
        """The answer so far: tokens up to the first mask or EOS, decoded."""
        for stop in (self.mask_id, self.eos_id):
            if stop is not None and stop in tokens:
                tokens = tokens[:tokens.index(stop)]
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def __call__(self, block: int, tokens: torch.Tensor) -> None:
        text = self.text(tokens[0].tolist())
        # A token split across blocks can change the decoding of the shown tail: wait for the end then.
        if text.startswith(self.shown) and len(text) > len(self.shown):
            self.out.write(text[len(self.shown):])
            self.out.flush()
            self.shown = text

    def finish(self, text: str) -> None:
        self.out.write((text[len(self.shown):] if text.startswith(self.shown) else "\n" + text) + "\n")
        self.out.flush()


class ChatSession:
    """A conversation with one sampler: ``reply(message)`` returns the answer, printed block by block (a
    model's own decoder: printed when it is done)."""

    def __init__(self, sampler, *, use_template: bool, system: Optional[str], options: dict, out: TextIO):
        tokenizer = sampler.tokenizer
        if use_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("the checkpoint's tokenizer has no chat template; pass --no-chat-template to chat "
                             "with the plain transcript")
        if system is not None and not use_template:
            raise ValueError("--system needs the chat template (it is ignored by --no-chat-template)")
        self.sampler, self.tokenizer, self.use_template, self.options, self.out = \
            sampler, tokenizer, use_template, options, out
        self.system = system
        self.messages: List[dict] = []
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def forget_last_message(self) -> None:
        """Drop the user's message whose answer was interrupted (it has no answer to pair with)."""
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()

    def _prompt_ids(self) -> List[int]:
        if self.use_template:
            text = self.tokenizer.apply_chat_template(self.messages, tokenize=False, add_generation_prompt=True)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        ids = list(self.tokenizer("".join(m["content"] for m in self.messages))["input_ids"])
        bos = self.tokenizer.bos_token_id
        return ids if bos is None or (ids and ids[0] == bos) else [bos] + ids

    def reply(self, message: str) -> str:
        self.messages.append({"role": "user", "content": message})
        ids = self._prompt_ids()
        from ..samplers import GenerateOptions

        decoder = _is_decoder(self.sampler)
        if decoder:
            gen_length = _decoder_setting(self.sampler, self.options, "gen_length")
        else:
            gen_length = GenerateOptions(**{**self.sampler.defaults, **self.options}).gen_length
        limit = self.sampler.max_positions
        if limit is not None and decoder:   # the decoders' canvas is whole blocks
            block = _decoder_block(self.sampler, self.options)
            limit = limit // block * block
        if limit is not None and len(ids) + gen_length > limit:
            room = limit - gen_length
            if room < 1:
                raise ValueError(f"gen_length ({gen_length}) leaves no room for a prompt in the model's "
                                 f"{limit} positions")
            # The oldest tokens go first; a leading BOS stays.
            keep = ids[:1] if ids[0] == self.tokenizer.bos_token_id and room > 1 else []
            ids = keep + ids[len(ids) - (room - len(keep)):]
        printer = _BlockPrinter(self.tokenizer, self.sampler.mask_id, self.sampler.eos_id, self.out)
        streaming = {} if decoder else {"on_block": printer}
        result = self.sampler.generate([ids], **self.options, **streaming)
        answer = result.texts[0]
        printer.finish(answer)
        self.messages.append({"role": "assistant", "content": answer})
        return answer


def main(argv: Optional[List[str]] = None, stdin: Optional[TextIO] = None, stdout: Optional[TextIO] = None) -> int:
    """Entry point of ``infogain chat``; reads ``stdin`` (default sys.stdin) until EOF or /exit."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    options = generate_options(args)

    from ._cliutil import parse_device
    from ..evaluation import load_generator
    from ..evaluation.config import fit_lengths
    from ..samplers import MODEL_DECODERS, GenerateOptions, make_sampler

    decoder = args.sampler in MODEL_DECODERS
    try:
        device = parse_device("--device", args.device)
        if not decoder:   # a decoder's options are its own: checked once it is made for the model
            # Options that are wrong whatever the model is are refused before it loads.
            early = {**vars(GenerateOptions()), **options}
            early.update(fit_lengths(early, options))
            GenerateOptions(**early).validate()
        try:
            # No --dtype: the checkpoint's own dtype.
            loaded = load_generator({"model": args.model, "sampler": args.sampler, "device": str(device),
                                     "dtype": args.dtype or "checkpoint"})
        except (ValueError, TypeError, OSError) as exc:
            raise ValueError(f"--model {args.model!r}: {exc}") from exc
        if loaded.tokenizer is None:
            raise ValueError(f"--model {args.model!r} has no tokenizer files")
        # Lengths left unset fit the model (the toy model has 64 positions, generate's default is 256);
        # set ones it cannot hold are refused now, not at the first message.
        sampler = loaded.sampler
        if decoder:
            # load_generator made the decoder for this model (a model it does not fit is refused there, in its
            # words) with eval's defaults; chat's is made with the decoder's own and the flags, checked by it.
            options = decoder_options(sampler, options)
            sampler = make_sampler(args.sampler, loaded.model, loaded.tokenizer, **options)
        else:
            defaults = vars(GenerateOptions(**{**sampler.defaults, **options}))
            options.update(fit_lengths(defaults, options, max_positions=sampler.max_positions))
            GenerateOptions(**options).validate()
        session = ChatSession(sampler, use_template=not args.no_chat_template, system=args.system,
                              options=options, out=stdout)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    _converse(session, stdin, stdout)
    return 0


def _converse(session: ChatSession, stdin: TextIO, stdout: TextIO) -> None:
    """The read-reply loop until end of input or /exit. Ctrl-C drops the message being answered (or the
    line being typed) and returns to the prompt; only end of input or /exit ends the chat."""
    interactive = stdin.isatty()
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            stdout.write("\n")
            continue
        if not line:
            if interactive:
                stdout.write("\n")   # Ctrl-D leaves the cursor after "you> ": the shell's prompt gets its own line
                stdout.flush()
            break
        message = line.rstrip("\n")
        if message.strip() in ("/exit", "/quit"):
            break
        if message.strip() == "/reset":
            session.reset()
            stdout.write("(conversation reset)\n")
            continue
        if not message.strip():
            continue
        stdout.write("assistant> ")
        stdout.flush()
        try:
            session.reply(message)
        except KeyboardInterrupt:
            session.forget_last_message()
            stdout.write("\n(interrupted; the message is dropped from the conversation)\n")
            stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
