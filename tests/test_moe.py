"""``infogain.models.moe.SparseMoE`` against a token-by-token reference written here.

The reference follows the routing rule of LLaDA2's official modelling code one token at a time, with
plain Python lists for the group scores and the selection, and runs the chosen experts in float64.
"""
import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F

from infogain.models.moe import SparseMoE

# The shrunken LLaDA2 layer the CPU benchmark also uses.
SMALL = dict(hidden_size=64, moe_intermediate_size=32, num_experts=16, top_k=4, n_group=4, topk_group=2,
             routed_scaling_factor=2.5)


def make(seed=0, bias_scale=0.0, **overrides):
    torch.manual_seed(seed)
    config = {**SMALL, **overrides}
    moe = SparseMoE(**config)
    with torch.no_grad():
        # Larger than the default init so the router's scores spread well apart.
        moe.gate_weight.normal_(0.0, 0.5)
        if bias_scale:
            moe.expert_bias.normal_(0.0, bias_scale)
    return moe


def reference_route(moe, x):
    """Per token: (chosen experts in decreasing corrected score, their float weights)."""
    E, k = moe.num_experts, moe.top_k
    groups = moe.n_group
    per_group = E // groups
    bias = moe.expert_bias.tolist()
    choices, weights = [], []
    for token in x.float():
        logits = (moe.gate_weight.float() @ token).tolist()
        if moe.score_function == "sigmoid":
            scores = [1.0 / (1.0 + math.exp(-v)) for v in logits]
        else:
            top = max(logits)
            exps = [math.exp(v - top) for v in logits]
            scores = [e / sum(exps) for e in exps]
        corrected = [s + b for s, b in zip(scores, bias)]
        eligible = list(range(E))
        if groups > 1:
            group_score = []
            for g in range(groups):
                members = sorted(corrected[g * per_group:(g + 1) * per_group], reverse=True)
                group_score.append(sum(members[:2]))
            kept = sorted(range(groups), key=lambda g: group_score[g], reverse=True)[:moe.topk_group]
            eligible = [e for e in range(E) if e // per_group in kept]
        chosen = sorted(eligible, key=lambda e: corrected[e], reverse=True)[:k]
        w = [scores[e] for e in chosen]
        renormalise = moe.norm_topk_prob and (k > 1 or moe.score_function == "softmax")
        if renormalise:
            total = sum(w)
            w = [v / total for v in w]
        choices.append(chosen)
        weights.append([v * moe.routed_scaling_factor for v in w])
    return choices, weights


def swiglu(x, gate, up, down):
    return down @ (F.silu(gate @ x) * (up @ x))


def reference_forward(moe, x):
    """float64 output [N, hidden] of ``moe`` on ``x [N, hidden]``."""
    choices, weights = reference_route(moe, x)
    d = lambda t: t.detach().double()  # noqa: E731
    out = torch.zeros(x.shape[0], moe.hidden_size, dtype=torch.float64)
    for n, token in enumerate(d(x)):
        for e, w in zip(choices[n], weights[n]):
            out[n] += w * swiglu(token, d(moe.experts_gate[e]), d(moe.experts_up[e]), d(moe.experts_down[e]))
        if moe.shared is not None:
            s = moe.shared
            out[n] += swiglu(token, d(s.gate_proj.weight), d(s.up_proj.weight), d(s.down_proj.weight))
    return out


def test_routing_equals_the_reference_and_the_bias_changes_choices():
    moe = make(bias_scale=0.2)
    x = torch.randn(256, SMALL["hidden_size"])
    idx, weight = moe.route(x)
    assert idx.dtype == torch.long and weight.dtype == torch.float32
    assert idx.shape == weight.shape == (256, 4)
    choices, weights = reference_route(moe, x)
    assert idx.tolist() == choices
    torch.testing.assert_close(weight, torch.tensor(weights), rtol=1e-5, atol=1e-6)
    # Chosen experts sit in at most topk_group groups.
    assert all(len({e // 4 for e in row}) <= 2 for row in choices)

    unbiased = make(bias_scale=0.2)
    unbiased.expert_bias.zero_()
    plain = reference_route(unbiased, x)[0]
    changed = sum(set(a) != set(b) for a, b in zip(choices, plain))
    assert changed > 10, "the expert bias must change some selections, or the test is vacuous"


@pytest.mark.parametrize("shared", [0, 2])
@pytest.mark.parametrize("top_k", [1, 4])
@pytest.mark.parametrize("tokens", [1, 256])
def test_forward_equals_the_reference(shared, top_k, tokens):
    moe = make(seed=top_k + shared, bias_scale=0.1, top_k=top_k, num_shared_experts=shared)
    assert (moe.shared is not None) == bool(shared)
    x = torch.randn(tokens, SMALL["hidden_size"])
    got = moe(x)
    assert got.shape == x.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), reference_forward(moe, x), rtol=1e-5, atol=1e-5)


def test_top_k_1_uses_the_raw_sigmoid_score():
    moe = make(bias_scale=0.0, top_k=1, n_group=1, topk_group=1, routed_scaling_factor=1.0)
    x = torch.randn(32, SMALL["hidden_size"])
    idx, weight = moe.route(x)
    expected = torch.sigmoid(x @ moe.gate_weight.T).max(dim=-1)
    assert idx[:, 0].tolist() == expected.indices.tolist()
    torch.testing.assert_close(weight[:, 0], expected.values)
    assert (weight < 1).all()  # not renormalised to 1


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("top_k", [1, 2])
def test_softmax_routing(norm, top_k):
    moe = make(seed=3, score_function="softmax", n_group=None, topk_group=None, routed_scaling_factor=1.0,
               norm_topk_prob=norm, top_k=top_k, num_experts=8)
    x = torch.randn(64, SMALL["hidden_size"])
    idx, weight = moe.route(x)
    choices, weights = reference_route(moe, x)
    assert idx.tolist() == choices
    torch.testing.assert_close(weight, torch.tensor(weights), rtol=1e-5, atol=1e-6)
    if norm:
        torch.testing.assert_close(weight.sum(-1), torch.ones(64))
    torch.testing.assert_close(moe(x).double(), reference_forward(moe, x), rtol=1e-5, atol=1e-5)


def test_an_expert_without_tokens_and_a_leading_shape():
    moe = make(bias_scale=0.0, num_shared_experts=1)
    with torch.no_grad():
        moe.expert_bias[[0, 5, 6]] = -10.0  # never chosen
    x = torch.randn(2, 3, SMALL["hidden_size"])
    idx, _ = moe.route(x.reshape(-1, SMALL["hidden_size"]))
    assert not torch.isin(idx, torch.tensor([0, 5, 6])).any()
    got = moe(x)
    assert got.shape == x.shape
    torch.testing.assert_close(got.reshape(6, -1).double(), reference_forward(moe, x.reshape(6, -1)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not callable(getattr(torch, "_grouped_mm", None)), reason="torch has no _grouped_mm")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_grouped_gemm_path_agrees_with_the_loop(dtype):
    moe = make(bias_scale=0.1, num_shared_experts=1).to(dtype)
    with torch.no_grad():
        moe.expert_bias[3] = -10.0  # an empty group in the offsets
    x = torch.randn(40, SMALL["hidden_size"]).to(dtype)
    moe.grouped_mm = False
    looped = moe(x)
    moe.grouped_mm = True
    try:
        grouped = moe(x)
    except RuntimeError as err:  # this torch build has no CPU kernel for it
        pytest.skip(f"torch._grouped_mm does not run here: {err}")
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(grouped, looped, **tolerance)


def test_bfloat16_is_close_to_float32():
    moe = make(bias_scale=0.0, num_shared_experts=1).to(torch.bfloat16)
    x = torch.randn(64, SMALL["hidden_size"]).bfloat16()
    half = moe(x)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    # The same (bf16-valued) weights and inputs in float32: the router, which computes in float32 either
    # way, picks the same experts, so the difference is the experts' bf16 arithmetic alone.
    idx = moe.route(x)[0]
    moe.float()
    assert torch.equal(moe.route(x.float())[0], idx)
    full = moe(x.float())
    error = (half.float() - full).norm() / full.norm()
    assert error < 0.02, error


def test_gradients_reach_the_router_and_the_experts():
    moe = make(num_shared_experts=1)
    x = torch.randn(8, SMALL["hidden_size"], requires_grad=True)
    moe(x).square().sum().backward()
    for p in (moe.gate_weight, moe.experts_gate, moe.experts_down, moe.shared.up_proj.weight, x):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides,argument", [
    (dict(num_experts=15), "n_group"),
    (dict(topk_group=5), "topk_group"),
    (dict(top_k=9), "top_k"),
    (dict(score_function="relu"), "score_function"),
    (dict(hidden_size=0), "hidden_size"),
    (dict(num_shared_experts=-1), "num_shared_experts"),
    (dict(routed_scaling_factor=float("nan")), "routed_scaling_factor"),
    (dict(norm_topk_prob=1), "norm_topk_prob"),
])
def test_bad_arguments_name_the_argument(overrides, argument):
    with pytest.raises(ValueError, match=argument):
        SparseMoE(**{**SMALL, **overrides})


def test_bad_input_names_the_argument():
    moe = make()
    with pytest.raises(ValueError, match="x.*hidden_size=64"):
        moe(torch.randn(3, 63))
    with pytest.raises(TypeError, match="x"):
        moe(torch.ones(3, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="x2d"):
        moe.route(torch.randn(2, 3, 64))


# ------------------------------------------------------------------ the relaid-out weight copy (CPU)

def test_the_relaid_out_weights_agree_with_the_plain_loop_and_are_used_without_autograd():
    moe = make(bias_scale=0.1, num_shared_experts=2)
    x = torch.randn(96, SMALL["hidden_size"])
    with torch.no_grad():
        moe.expert_bias[5] = -10.0  # an expert without rows in the loop
        moe.relayout = False
        plain = moe(x)
        assert moe._relayout is None
        moe.relayout = None  # the small layer qualifies automatically
        relaid = moe(x)
        assert moe._relayout is not None
    torch.testing.assert_close(relaid, plain, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(relaid.double(), reference_forward(moe, x), rtol=1e-5, atol=1e-5)
    # With autograd on, the parameters themselves run (the copy is detached); the values agree.
    moe.drop_relayout()
    with_grad = moe(x)
    assert with_grad.requires_grad and moe._relayout is None
    torch.testing.assert_close(with_grad.detach(), plain, rtol=1e-5, atol=1e-6)


def test_a_weight_changed_in_place_after_a_call_gives_the_new_result():
    moe = make(bias_scale=0.1, num_shared_experts=1)
    x = torch.randn(64, SMALL["hidden_size"])
    with torch.no_grad():
        moe(x)
        first = moe._relayout
        for weight in (moe.experts_gate, moe.experts_up, moe.experts_down, moe.shared.down_proj.weight):
            weight.mul_(-0.5)  # in place: the version counter moves, the address does not
            got = moe(x)
            assert moe._relayout is not first
            first = moe._relayout
            torch.testing.assert_close(got.double(), reference_forward(moe, x), rtol=1e-5, atol=1e-5)
        # Without a change the copy is reused.
        moe(x)
        assert moe._relayout is first


def test_reloaded_weights_give_the_new_result():
    moe = make(bias_scale=0.1, num_shared_experts=1)
    other = make(seed=7, bias_scale=0.1, num_shared_experts=1)
    x = torch.randn(64, SMALL["hidden_size"])
    with torch.no_grad():
        moe(x)
        moe.load_state_dict(other.state_dict(), assign=True)  # new tensors, as the hub loader does
        torch.testing.assert_close(moe(x), other(x), rtol=1e-5, atol=1e-6)
        # A write through .data bypasses the version counter; drop_relayout makes it seen.
        moe.experts_up.data.mul_(2.0)
        moe.drop_relayout()
        torch.testing.assert_close(moe(x).double(), reference_forward(moe, x), rtol=1e-5, atol=1e-5)


def test_inference_tensor_weights_run_the_plain_loop():
    with torch.inference_mode():
        moe = make(bias_scale=0.1, num_shared_experts=1)
        x = torch.randn(32, SMALL["hidden_size"])
        first = moe(x)
        assert moe._relayout is None  # no version counter to notice an in-place change with
        moe.experts_down.mul_(3.0)
        torch.testing.assert_close(moe(x).double(), reference_forward(moe, x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(first, moe(x))


def test_the_relayout_size_limits():
    big = SparseMoE(hidden_size=2048, moe_intermediate_size=512, num_experts=2, top_k=1, device="meta")
    x = torch.empty(1, 2048, device="meta")
    with torch.no_grad():
        assert big._relaid_out(x) is None  # 12 MiB per expert: measured slower
        big.relayout = True
        assert big._relaid_out(x) is not None
        small = make()
        small.relayout = False
        assert small._relaid_out(torch.empty(1, SMALL["hidden_size"])) is None


def test_a_module_with_a_cached_relayout_copies_and_pickles():
    moe = make(bias_scale=0.1, num_shared_experts=1)
    x = torch.randn(16, SMALL["hidden_size"])
    with torch.no_grad():
        expected = moe(x)
        assert moe._relayout is not None
        twin = copy.deepcopy(moe)
        buffer = io.BytesIO()
        torch.save(moe, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        for other in (twin, loaded):
            assert other._relayout is None
            torch.testing.assert_close(other(x), expected, rtol=0, atol=0)
