"""Fast-dLLM v2 (Fast_dLLM_QwenForCausalLM) loads from official-format checkpoints, matches an
independent forward with and without its caches, every sampler decodes it at batch 2 with ragged
prompts, and its own decoder matches an independent re-implementation of the official generation
loop token for token.

The reference below is written for clarity: Qwen2 layers (q/k/v biases, no qk-norm) one row at a
time in float64, the block-causal rule ``key_block <= query_block`` over absolute positions, per-layer
keys and values handed in explicitly (so the official loop's two caches are plain lists), and the
token shift applied as the official loop applies it: the block's outputs rolled by one.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from infogain import models
from infogain.samplers import SAMPLERS, make_sampler
from infogain.samplers.naive import NaiveInfoGainSampler
from test_llada2_model import rms, write_checkpoint  # the official-format writer and RMSNorm of the LLaDA2 tests

TINY = {
    "architectures": ["Fast_dLLM_QwenForCausalLM"], "model_type": "Fast_dLLM_Qwen", "vocab_size": 96,
    "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "rope_scaling": None, "use_sliding_window": False, "tie_word_embeddings": False,
    "max_position_embeddings": 256, "bd_size": 8, "small_block_size": 4, "mask_token_id": 90,
    "eos_token_id": 91, "pad_token_id": 92,
}
BLOCK, SUB = 8, 4


def official_tensors(cfg, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, s=scale):
        return torch.randn(*shape, generator=g) * s

    H, nh, nkv, I = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
    D = H // nh
    t = {"model.embed_tokens.weight": rnd(cfg["vocab_size"], H, s=1.0), "model.norm.weight": 1 + rnd(H, s=0.2)}
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = rnd(cfg["vocab_size"], H, s=0.6)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + rnd(H, s=0.2)
        t[p + "post_attention_layernorm.weight"] = 1 + rnd(H, s=0.2)
        for proj, rows in (("q_proj", nh * D), ("k_proj", nkv * D), ("v_proj", nkv * D)):
            t[f"{p}self_attn.{proj}.weight"] = rnd(rows, H)
            t[f"{p}self_attn.{proj}.bias"] = rnd(rows)
        t[p + "self_attn.o_proj.weight"] = rnd(H, nh * D)
        for proj, shape in (("gate_proj", (I, H)), ("up_proj", (I, H)), ("down_proj", (H, I))):
            t[f"{p}mlp.{proj}.weight"] = rnd(*shape)
    return t


# ----------------------------------------------------------------------------- the reference forward

class Reference:
    """One row at a time, float64. ``run(ids, positions, past, allowed)``: ``ids``/``positions`` [L];
    ``past`` per layer (k, v) ``[heads_kv, S, D]`` or None; ``allowed [L, S + L]`` bool or None (all).
    Returns (unshifted logits [L, V], per-layer fresh (k, v))."""

    def __init__(self, tensors, cfg):
        self.t = {k: v.double() for k, v in tensors.items()}
        self.cfg = cfg
        self.nh, self.nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.D = cfg["hidden_size"] // self.nh

    def rope(self, v, pos):
        D = self.D
        inv_freq = 1.0 / (self.cfg["rope_theta"] ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
        ang = pos.double()[:, None] * inv_freq[None]
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
        return v * cos + torch.cat([-v[..., D // 2:], v[..., :D // 2]], -1) * sin

    def run(self, ids, positions, past=None, allowed=None):
        t, cfg, nh, nkv, D = self.t, self.cfg, self.nh, self.nkv, self.D
        eps, L = cfg["rms_norm_eps"], len(ids)
        x = t["model.embed_tokens.weight"][ids]
        fresh = []
        for i in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{i}."
            h = rms(x, t[p + "input_layernorm.weight"], eps)

            def proj(name, heads):
                w, b = t[f"{p}self_attn.{name}.weight"], t[f"{p}self_attn.{name}.bias"]
                return (h @ w.T + b).view(L, heads, D).transpose(0, 1)

            q, k, v = self.rope(proj("q_proj", nh), positions), self.rope(proj("k_proj", nkv), positions), \
                proj("v_proj", nkv)
            fresh.append((k, v))
            if past is not None:
                k, v = torch.cat([past[i][0], k], 1), torch.cat([past[i][1], v], 1)
            k, v = k.repeat_interleave(nh // nkv, 0), v.repeat_interleave(nh // nkv, 0)
            att = (q @ k.transpose(1, 2)) / math.sqrt(D)
            if allowed is not None:
                att = att.masked_fill(~allowed[None], float("-inf"))
            att = att.softmax(-1).nan_to_num(0.0)
            x = x + (att @ v).transpose(0, 1).reshape(L, nh * D) @ t[p + "self_attn.o_proj.weight"].T
            h = rms(x, t[p + "post_attention_layernorm.weight"], eps)
            gated = F.silu(h @ t[p + "mlp.gate_proj.weight"].T) * (h @ t[p + "mlp.up_proj.weight"].T)
            x = x + gated @ t[p + "mlp.down_proj.weight"].T
        head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
        return rms(x, t["model.norm.weight"], eps) @ head.T, fresh


def reference_logits(tensors, cfg, ids, attention_mask, block=BLOCK):
    """Our convention's logits [B, T, V]: block-causal by position, then the token shift (position i
    reads the output at i - 1; a row's first real token keeps its own)."""
    ref = Reference(tensors, cfg)
    B, T = ids.shape
    out = torch.zeros(B, T, cfg["vocab_size"], dtype=torch.float64)
    for b in range(B):
        real = attention_mask[b]
        pos = (torch.cumsum(real.long(), 0) - 1).clamp_min(0)
        seg = pos // block
        allowed = (seg[None, :] <= seg[:, None]) & real[None, :]
        raw, _ = ref.run(ids[b], pos, allowed=allowed)
        for j in range(T):
            out[b, j] = raw[j - 1] if j > 0 and real[j - 1] else raw[j]
    return out


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tensors = official_tensors(TINY)
    return write_checkpoint(str(tmp_path_factory.mktemp("fdllm")), TINY, tensors), tensors


def aligned_pair(T=4 * BLOCK):
    """Two rows; the second left-padded by one whole block (block boundaries on the same columns)."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 89, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, :BLOCK] = False
    ids[1, :BLOCK] = TINY["pad_token_id"]
    return ids, mask


# ----------------------------------------------------------------------------- model tests

def test_config_fields(checkpoint):
    from infogain.models import fast_dllm_v2
    from infogain.models.hub import architecture_of

    path, _ = checkpoint
    model, _ = models.load(path)
    assert architecture_of(models.preset_config("fast-dllm-v2-7b")).NAME == "fast_dllm_v2"
    assert model.config.arch == "fast_dllm_v2" and model.config.block_anchor == "position"
    assert model.config.block_length == BLOCK and fast_dllm_v2.sub_block_length(model.config.extra) == SUB
    assert model.config.mask_token_id == 90 and model.config.eos_token_id == 91
    assert model.blocks[0].attn.q_proj.bias is not None and model.blocks[0].attn.o_proj.bias is None
    preset = models.preset_config("fast-dllm-v2-7b")
    assert fast_dllm_v2.block_length(preset) == 32 and fast_dllm_v2.sub_block_length(preset) == 8


def test_full_forward_matches_reference(checkpoint):
    path, tensors = checkpoint
    model, _ = models.load(path)
    ids, mask = aligned_pair(29)
    with torch.no_grad():
        got = model(ids, mask)
        kept = model(ids, mask, keep=slice(9, 20))
    ref = reference_logits(tensors, TINY, ids, mask)
    real = mask[:, :, None].expand_as(got)
    assert max_err(got[real], ref[real]) <= 1e-4
    assert max_err(kept[1], ref[1, 9:20]) <= 1e-4


def test_block_causal_cache_and_candidates_match_reference(checkpoint):
    path, tensors = checkpoint
    model, _ = models.load(path)
    ids, mask = aligned_pair()
    ref = reference_logits(tensors, TINY, ids, mask)
    with torch.no_grad():
        logits, cache = model.prefill(ids, mask, mode="block_causal", start=2 * BLOCK, keep=slice(2 * BLOCK, 3 * BLOCK))
        assert max_err(logits, ref[:, 2 * BLOCK:3 * BLOCK]) <= 1e-4
        s = 2 * BLOCK
        got = model.forward_window(ids[:, s:s + BLOCK], start=s, cache=cache, mode="block_causal", write=True)
        assert max_err(got, ref[:, s:s + BLOCK]) <= 1e-4     # position s reads the prefill's boundary state
        s = 3 * BLOCK
        cands = ids[:, s:].repeat_interleave(3, 0).clone()
        cands[1::3, 0] = 7                                   # the block's first token changes too
        cands[2::3, 5] = 11
        rows = (0, 0, 0, 1, 1, 1)
        got = model.forward_window(cands, start=s, cache=cache, mode="block_causal", cache_rows=rows)
        plain = model.forward_window(cands[::3], start=s, cache=cache, mode="block_causal", cache_rows=(0, 1))
    for r, c in enumerate(rows):
        canvas = ids[c:c + 1].clone()
        canvas[0, s:] = cands[r]
        want = reference_logits(tensors, TINY, canvas, mask[c:c + 1])[0, s:]
        assert max_err(got[r], want) <= 1e-4
    assert max_err(plain, got[::3]) <= 1e-4


def test_sub_block_window_matches_reference_with_stale_block(checkpoint):
    """"sub_block": the window sees the prefix and its block as last written, its own columns fresh."""
    path, tensors = checkpoint
    model, _ = models.load(path)
    ids, mask = aligned_pair(3 * BLOCK)
    s0 = 2 * BLOCK
    stale = ids.clone()
    stale[:, s0:] = 90                                      # the block as written: all masks
    new = ids[:, s0 + SUB:s0 + 2 * SUB]
    with torch.no_grad():
        _, cache = model.prefill(stale, mask, mode="block_causal", start=s0)
        model.forward_window(stale[:, s0:], start=s0, cache=cache, mode="block_causal", write=True)
        got = model.forward_window(new, start=s0 + SUB, cache=cache, mode="sub_block")
    ref = Reference(tensors, TINY)
    for b in range(2):
        real = mask[b]
        pos = (torch.cumsum(real.long(), 0) - 1).clamp_min(0)
        seg = pos // BLOCK
        prefix = (seg[None, :s0] <= seg[:s0, None]) & real[None, :s0]
        _, kv_prefix = ref.run(stale[b, :s0], pos[:s0], allowed=prefix)
        _, kv_block = ref.run(stale[b, s0:], pos[s0:], past=kv_prefix,
                              allowed=torch.cat([real[None, :s0].expand(BLOCK, s0),
                                                 torch.ones(BLOCK, BLOCK, dtype=torch.bool)], 1))
        past = [(torch.cat([pk, bk[:, :SUB], bk[:, 2 * SUB:]], 1), torch.cat([pv, bv[:, :SUB], bv[:, 2 * SUB:]], 1))
                for (pk, pv), (bk, bv) in zip(kv_prefix, kv_block)]
        keys_ok = torch.cat([real[:s0], torch.ones(BLOCK, dtype=torch.bool)])
        raw, _ = ref.run(new[b], pos[s0 + SUB:s0 + 2 * SUB], past=past, allowed=keys_ok[None].expand(SUB, -1))
        want = torch.cat([raw[:1], raw[:-1]])               # the window's first position keeps its own output
        assert max_err(got[b], want) <= 1e-4
    with pytest.raises(ValueError, match="sub_block"):
        model.forward_window(new, start=s0 + SUB, cache=cache, mode="sub_block", write=True)
    with pytest.raises(ValueError, match="sub_block"):
        model.forward_window(ids[:, :BLOCK], start=3 * BLOCK - 4, cache=cache, mode="sub_block")


def test_save_load_round_trip_and_tied_head(checkpoint, tmp_path):
    path, _ = checkpoint
    model, _ = models.load(path)
    models.save(model, str(tmp_path / "copy"))
    again, _ = models.load(str(tmp_path / "copy"))
    ids, mask = aligned_pair()
    with torch.no_grad():
        assert torch.equal(model(ids, mask), again(ids, mask))
    cfg = dict(TINY, tie_word_embeddings=True)
    tensors = official_tensors(cfg, seed=2)
    tied, _ = models.load(write_checkpoint(str(tmp_path / "tied"), cfg, tensors))
    with torch.no_grad():
        got = tied(ids, mask)
    real = mask[:, :, None].expand_as(got)
    assert max_err(got[real], reference_logits(tensors, cfg, ids, mask)[real]) <= 1e-4


@pytest.mark.parametrize("change,match", [
    (lambda c, t: t.pop("model.layers.1.self_attn.k_proj.bias"), "missing"),
    (lambda c, t: t.__setitem__("model.layers.0.self_attn.q_norm.weight", torch.ones(8)), "unexpected"),
    (lambda c, t: t.__setitem__("model.layers.0.self_attn.v_proj.bias", torch.zeros(3)), "v_proj.bias"),
    (lambda c, t: c.__setitem__("small_block_size", 3), "small_block_size"),
    (lambda c, t: c.__setitem__("use_sliding_window", True), "use_sliding_window"),
    (lambda c, t: c.__setitem__("bd_size", 0), "bd_size"),
])
def test_bad_checkpoints_give_clear_errors(tmp_path, change, match):
    cfg, tensors = dict(TINY), official_tensors(TINY)
    change(cfg, tensors)
    with pytest.raises(ValueError, match=match):
        models.load(write_checkpoint(str(tmp_path / "bad"), cfg, tensors))


# ----------------------------------------------------------------------------- the samplers

PROMPTS = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [20, 21, 22]]


@pytest.fixture(scope="module")
def model(checkpoint):
    return models.load(checkpoint[0])[0]


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_decodes_with_the_exact_cache(model, name):
    kw = dict(gen_length=16, steps=8, block_length=BLOCK, seed=4, temperature=0.0, stop_at_eos=False)
    outputs = {cache: make_sampler(name, model).generate(PROMPTS, cache=cache, **kw).sequences
               for cache in ("none", "prefix")}
    assert outputs["none"].shape == (2, 16) and (outputs["none"] != 90).all()
    assert torch.equal(outputs["prefix"], outputs["none"])


@pytest.mark.parametrize("variant", ["info_gain", "lookum"])
@pytest.mark.parametrize("cache", ["none", "prefix"])
def test_fast_sampler_equals_naive_baseline(model, variant, cache):
    kw = dict(gen_length=16, steps=8, block_length=BLOCK, cache=cache, seed=3, temperature=0.0, variant=variant,
              stop_at_eos=False)
    fast = make_sampler("info_gain", model).generate(PROMPTS, **kw)
    naive = NaiveInfoGainSampler(model).generate(PROMPTS, **kw)
    assert torch.equal(fast.sequences, naive.sequences)


# ----------------------------------------------------------------------------- its own decoder

def official_generate(tensors, cfg, prompt, max_new_tokens, threshold, use_block_cache, block=BLOCK, sub=SUB):
    """The official ``generate`` loop for one prompt, at temperature 0, written out on the reference:
    a prefix cache of the whole blocks, the block's keys and values kept by the sub-block cache (reset
    every block, as ``batch_sample`` does), the shift applied by rolling the window's outputs. As in the
    package, the mask token's logit is -inf. Returns the prompt and generation up to the first stop."""
    ref, mask_id, stop = Reference(tensors, cfg), cfg["mask_token_id"], cfg["eos_token_id"]

    def block_allowed(q_pos, k_pos):
        return (k_pos[None, :] // block) <= (q_pos[:, None] // block)

    def greedy(logits):
        logits = logits.clone()
        logits[..., mask_id] = float("-inf")
        probs = torch.softmax(logits, -1)
        return probs.argmax(-1), probs.max(-1).values

    x, past = list(prompt), None          # past: per layer (k, v) of positions [0, len)
    if len(x) > block:
        n = len(x) // block * block
        pos = torch.arange(n)
        raw, past = ref.run(torch.tensor(x[:n]), pos, allowed=block_allowed(pos, pos))
        if len(x) % block == 0:
            x.append(int(greedy(raw[-1])[0]))
    original = len(prompt)
    for _ in range(max_new_tokens // block):
        if stop in x[original:]:
            break
        prompt_length = len(x)
        x += [mask_id] * (block - prompt_length % block)
        s0 = len(x) - block
        block_kv = None

        def stopped():
            tail = x[prompt_length:]
            return stop in tail and mask_id not in tail[:tail.index(stop)]

        def forward_block(update):
            nonlocal past
            pos = torch.arange(s0, s0 + block)
            kv = past
            allowed = None if kv is None else torch.ones(block, s0 + block, dtype=torch.bool)
            raw, fresh = ref.run(torch.tensor(x[s0:]), pos, past=kv, allowed=allowed)
            if update:
                past = fresh if past is None else [(torch.cat([pk, k], 1), torch.cat([pv, v], 1))
                                                   for (pk, pv), (k, v) in zip(past, fresh)]
            return raw, fresh

        while True:
            if stopped():
                break
            if mask_id not in x[s0:]:
                raw, _ = forward_block(update=True)
                x.append(int(greedy(raw[-1])[0]))
                break
            for a in range(0, block, sub):
                while True:
                    if mask_id not in x[s0 + a:s0 + a + sub] or stopped():
                        break
                    if not use_block_cache:
                        raw, _ = forward_block(update=False)
                        logits = torch.cat([raw[:1], raw[:-1]])[a:a + sub]
                    elif block_kv is None or x[s0 + a] == mask_id:
                        raw, block_kv = forward_block(update=False)
                        logits = torch.cat([raw[:1], raw[:-1]])[a:a + sub]
                    else:
                        # The sub-block against the prefix and the block's cached keys, its own fresh;
                        # the fresh keys are written into the block cache in place.
                        pos = torch.arange(s0 + a, s0 + a + sub)
                        ctx = [(torch.cat([pk, bk], 1) if pk is not None else bk,
                                torch.cat([pv, bv], 1) if pv is not None else bv)
                               for (pk, pv), (bk, bv) in zip(past or [(None, None)] * len(block_kv), block_kv)]
                        S = ctx[0][0].shape[1]
                        keep = torch.ones(S, dtype=torch.bool)
                        keep[S - block + a:S - block + a + sub] = False
                        ctx = [(k[:, keep], v[:, keep]) for k, v in ctx]
                        raw, fresh = ref.run(torch.tensor(x[s0 + a:s0 + a + sub]), pos, past=ctx)
                        block_kv = [(torch.cat([bk[:, :a], k, bk[:, a + sub:]], 1),
                                     torch.cat([bv[:, :a], v, bv[:, a + sub:]], 1))
                                    for (bk, bv), (k, v) in zip(block_kv, fresh)]
                        logits = torch.cat([raw[:1], raw[:-1]])
                    token, prob = greedy(logits)
                    masked = torch.tensor([t == mask_id for t in x[s0 + a:s0 + a + sub]])
                    confidence = torch.where(masked, prob, torch.tensor(float("-inf"), dtype=prob.dtype))
                    take = confidence > threshold
                    take[int(confidence.argmax())] = True
                    for j in range(sub):
                        if take[j] and masked[j]:
                            x[s0 + a + j] = int(token[j])
    if stop in x[original:]:
        x = x[:original + x[original:].index(stop) + 1]
    return x


def truncated(sequence, stop):
    sequence = list(sequence)
    return sequence[:sequence.index(stop) + 1] if stop in sequence else sequence


@pytest.fixture(scope="module")
def decoder_checkpoint(tmp_path_factory):
    # Larger weights: confident predictions, so that several tokens pass the threshold per step.
    tensors = official_tensors(TINY, seed=7, scale=0.6)
    return write_checkpoint(str(tmp_path_factory.mktemp("fdllm_dec")), TINY, tensors), tensors


@pytest.mark.parametrize("prompt_length", [5, 16, 19])
@pytest.mark.parametrize("cache", ["none", "block", "sub_block"])
def test_own_decoder_matches_the_official_loop(decoder_checkpoint, prompt_length, cache):
    from infogain.samplers.fast_dllm_v2 import FastDLLMv2Sampler

    path, tensors = decoder_checkpoint
    model, _ = models.load(path)
    prompt = [(7 * i + 3) % 89 for i in range(prompt_length)]
    end = (prompt_length // BLOCK + 3) * BLOCK                    # three blocks past the prompt's
    gen_length = end - prompt_length
    # Three blocks (the first holds the prompt's tail, or starts with the arg-max token after it).
    want = official_generate(tensors, TINY, prompt, 3 * BLOCK, 0.5, use_block_cache=cache == "sub_block")
    sampler = FastDLLMv2Sampler(model, threshold=0.5, cache=cache)
    got = sampler.generate([prompt], gen_length=gen_length)
    ours = truncated(got.sequences[0].tolist(), TINY["eos_token_id"])
    official = want[prompt_length:prompt_length + len(ours)]
    assert ours == official, (ours, want[prompt_length:])
    assert got.stats.nfe > 0 and got.sequences.shape == (1, gen_length)


def test_own_decoder_batch_of_ragged_prompts_and_caches(decoder_checkpoint):
    from infogain.samplers import fast_dllm_v2

    path, _ = decoder_checkpoint
    model, _ = models.load(path)
    prompts = [[(5 * i + 1) % 89 for i in range(11)], [20, 21, 22], [30] * 16]
    outs = {}
    for cache in fast_dllm_v2.CACHES:
        sampler = fast_dllm_v2.FastDLLMv2Sampler(model, cache=cache, threshold=0.5)
        outs[cache] = sampler.generate(prompts, gen_length=13).sequences
        assert outs[cache].shape == (3, 13) and (outs[cache] != 90).all()
        if cache != "sub_block":   # the sub-block cache's refresh is the batch's; the others are per row
            for r, prompt in enumerate(prompts):
                assert torch.equal(sampler.generate([prompt], gen_length=13).sequences[0], outs[cache][r])
    assert torch.equal(outs["none"], outs["block"])
    with pytest.raises(ValueError, match="sub_block_length"):
        fast_dllm_v2.FastDLLMv2Sampler(model, sub_block_length=3)
    with pytest.raises(ValueError, match="cache"):
        fast_dllm_v2.FastDLLMv2Sampler(model).generate(prompts, cache="dual")
    sampled = fast_dllm_v2.FastDLLMv2Sampler(model, temperature=0.8, seed=1).generate(prompts, gen_length=13)
    again = fast_dllm_v2.FastDLLMv2Sampler(model, temperature=0.8, seed=1).generate(prompts, gen_length=13)
    assert torch.equal(sampled.sequences, again.sequences)
