"""The text side of a sampler run: prompt encoding (the chat template included), the canvas the
prompts are laid out on, and the decoding of the generated tokens back to text."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch


def config_value(obj, name):
    """``obj.name`` (the first item of a list / tuple value), None where ``obj`` has no such value."""
    value = getattr(obj, name, None) if obj is not None else None
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value


def encode_prompts(prompts, chat: bool, tokenizer, mask_id: int, vocab_size) -> List[List[int]]:
    """Token id lists of the prompts (strings, id lists or a tensor); ``vocab_size`` (an int, or
    anything else when unknown) bounds the ids."""
    if chat and not (isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and len(prompts) > 0
                                                  and all(isinstance(p, str) for p in prompts))):
        raise ValueError("chat=True applies the tokenizer's chat template to string prompts; these prompts "
                         "are token ids (apply the template before tokenizing, or pass chat=False)")
    if isinstance(prompts, torch.Tensor):
        if prompts.dtype in (torch.bool,) or prompts.dtype.is_floating_point or prompts.dtype.is_complex:
            raise TypeError(f"prompts tensor must have an integer dtype, got {prompts.dtype}")
        if prompts.dim() == 1:
            prompts = prompts[None]
        if prompts.dim() != 2:
            raise ValueError(f"prompts tensor must be [P] or [B, P], got shape {tuple(prompts.shape)}")
        rows = [list(map(int, row)) for row in prompts.tolist()]
    elif isinstance(prompts, str):
        rows = [encode_text(tokenizer, prompts, chat)]
    elif isinstance(prompts, (list, tuple)):
        if len(prompts) == 0:
            raise ValueError("prompts must not be empty")
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompts):
            rows = [list(prompts)]
        else:
            rows = []
            for i, p in enumerate(prompts):
                if isinstance(p, str):
                    rows.append(encode_text(tokenizer, p, chat))
                elif isinstance(p, torch.Tensor) and p.dim() == 1 and not p.dtype.is_floating_point:
                    rows.append([int(t) for t in p.tolist()])
                elif isinstance(p, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool)
                                                          for t in p):
                    rows.append(list(p))
                else:
                    raise TypeError(f"prompts[{i}] must be a string, a list of token ids or a 1-D integer "
                                    f"tensor, got {type(p).__name__}")
    else:
        raise TypeError(f"prompts must be a string, a list or a tensor, got {type(prompts).__name__}")
    for i, row in enumerate(rows):
        if len(row) == 0:
            raise ValueError(f"prompts[{i}] is empty")
        if any(t < 0 for t in row):
            raise ValueError(f"prompts[{i}] contains a negative token id")
        if isinstance(vocab_size, int) and any(t >= vocab_size for t in row):
            raise ValueError(f"prompts[{i}] contains a token id >= the model's vocab_size ({vocab_size})")
        if mask_id in row:
            # A mask in the prompt would be neither decoded nor kept meaningfully.
            raise ValueError(f"prompts[{i}] contains the mask token id {mask_id} at position "
                             f"{row.index(mask_id)}; only the generation region is decoded")
    return rows


def encode_text(tokenizer, text: str, chat: bool) -> List[int]:
    """The token ids of one string prompt (through the chat template with ``chat``)."""
    if tokenizer is None:
        raise ValueError("a tokenizer is required to encode string prompts")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat=True but the tokenizer has no chat template; pass chat=False")
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
        # The template already holds the special tokens (BOS); do not add them twice.
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(text)["input_ids"])


def build_canvas(rows: List[List[int]], gen_length: int, pad_id: int, mask_id: int,
                 device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, int, bool]:
    """The run's canvas: the prompts left padded with ``pad_id`` to one length P, then ``gen_length``
    masks.

    Returns ``(canvas, attention, P, padded)``: int64 and bool [B, P + gen_length] (``attention`` is
    False on the padding), and whether any prompt is padded."""
    batch = len(rows)
    prompt_length = max(len(r) for r in rows)
    total = prompt_length + gen_length
    canvas = torch.full((batch, total), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros(batch, total, dtype=torch.bool, device=device)
    for b, row in enumerate(rows):
        canvas[b, prompt_length - len(row):prompt_length] = torch.tensor(row, dtype=torch.long)
        attention[b, prompt_length - len(row):] = True
    canvas[:, prompt_length:] = mask_id
    padded = any(len(row) < prompt_length for row in rows)
    return canvas, attention, prompt_length, padded


def build_block_aligned_canvas(rows: List[List[int]], gen_length: int, block_length: int, pad_id: int, mask_id: int,
                               device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, int, List[int], bool]:
    """The canvas of a model whose blocks count from each row's position 0 (LLaDA2), laid out so that
    block boundaries are the same columns in every row.

    Row r is left padded by a multiple of ``block_length`` (its first token sits on a block boundary;
    positions ignore the padding), then its prompt, then its ``gen_length`` masks starting at
    ``gen_starts[r]``, then right padding up to T, a multiple of ``block_length``. The padding is
    chosen so that every row's generation starts within ``block_length`` columns of the longest
    prompt's end. A row's first decoded block holds its prompt's last, partial block, as in the
    official loop; each row decodes exactly as it would alone.

    Returns ``(canvas, attention, first_block, gen_starts, padded)``: int64 and bool ``[B, T]``
    (``attention`` False on the padding), the column of the first block holding a mask, each row's
    generation start, and whether any row has padding."""
    longest = max(len(r) for r in rows)
    gen_starts = [len(r) + (longest - len(r)) // block_length * block_length for r in rows]
    total = -(-(max(gen_starts) + gen_length) // block_length) * block_length
    canvas = torch.full((len(rows), total), pad_id, dtype=torch.long)
    attention = torch.zeros(len(rows), total, dtype=torch.bool)
    for b, (row, start) in enumerate(zip(rows, gen_starts)):
        canvas[b, start - len(row):start] = torch.tensor(row, dtype=torch.long)
        canvas[b, start:start + gen_length] = mask_id
        attention[b, start - len(row):start + gen_length] = True
    first_block = min(gen_starts) // block_length * block_length
    return canvas.to(device), attention.to(device), first_block, gen_starts, not bool(attention.all())


def generated_tokens(canvas: torch.Tensor, gen_starts: List[int], gen_length: int) -> torch.Tensor:
    """``[B, gen_length]``: row r's ``gen_length`` tokens from column ``gen_starts[r]``."""
    if len(set(gen_starts)) == 1:
        return canvas[:, gen_starts[0]:gen_starts[0] + gen_length].clone()
    return torch.stack([canvas[b, s:s + gen_length] for b, s in enumerate(gen_starts)])


def decode_texts(sequences: torch.Tensor, tokenizer, eos_id: Optional[int]) -> List[str]:
    """The generations as text, each cut at its first EOS, special tokens skipped."""
    texts = []
    for row in sequences.tolist():
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts
