"""kv_block_replace: multi-layer block copy into KV caches (C++ op, CPU path here; CUDA tests marked gpu).

The reference is a plain Python loop of slice assignments, one row and one layer at a time.
"""
import pytest
import torch

import infogain_kernels as ik
from infogain_kernels import _C
from infogain_kernels.kv_block_replace import STATUS_BAD_DST_START, STATUS_BAD_SRC_ROWS, STATUS_BAD_SRC_START

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LAYOUTS = ("bhtd", "bthd")


def as_list(offset, batch):
    if isinstance(offset, torch.Tensor):
        return [int(v) for v in offset.tolist()]
    return [offset] * batch


def reference_replace(caches, blocks, dst_start, src_start=0, src_rows=None, length=None, layout="bhtd"):
    """Returns new caches with the block copied in, by explicit per-row slice assignment."""
    seq_dim = 2 if layout == "bhtd" else 1
    out = [c.clone() for c in caches]
    batch = caches[0].shape[0]
    length = blocks[0].shape[seq_dim] if length is None else length
    dst, src = as_list(dst_start, batch), as_list(src_start, batch)
    rows = list(range(batch)) if src_rows is None else [int(v) for v in src_rows.tolist()]
    for cache, block in zip(out, blocks):
        for b in range(batch):
            if layout == "bhtd":
                cache[b, :, dst[b] : dst[b] + length, :] = block[rows[b], :, src[b] : src[b] + length, :]
            else:
                cache[b, dst[b] : dst[b] + length, :, :] = block[rows[b], src[b] : src[b] + length, :, :]
    return out


def make_pairs(gen, *, batch, block_batch, cache_len, block_len, heads, head_sizes, layout, dtype, device="cpu"):
    """Caches and blocks for layers with the given (heads, head size) per layer."""
    caches, blocks = [], []
    for h, d in zip(heads, head_sizes):
        if layout == "bhtd":
            cshape, bshape = (batch, h, cache_len, d), (block_batch, h, block_len, d)
        else:
            cshape, bshape = (batch, cache_len, h, d), (block_batch, block_len, h, d)
        caches.append(torch.randn(cshape, generator=gen).to(dtype).to(device))
        blocks.append(torch.randn(bshape, generator=gen).to(dtype).to(device))
    return caches, blocks


def random_case(seed, layout, dtype, device="cpu", index_dtype=torch.int64):
    gen = torch.Generator().manual_seed(seed)
    randint = lambda lo, hi: int(torch.randint(lo, hi + 1, (), generator=gen))  # noqa: E731
    layers = randint(1, 5)
    batch, block_batch = randint(1, 4), randint(1, 5)
    cache_len, block_len = randint(1, 24), randint(1, 9)
    length = randint(1, min(cache_len, block_len))
    heads = [randint(1, 4) for _ in range(layers)]
    head_sizes = [randint(1, 12) for _ in range(layers)]
    caches, blocks = make_pairs(gen, batch=batch, block_batch=block_batch, cache_len=cache_len, block_len=block_len,
                                heads=heads, head_sizes=head_sizes, layout=layout, dtype=dtype, device=device)
    dst = torch.randint(0, cache_len - length + 1, (batch,), generator=gen).to(index_dtype).to(device)
    src = torch.randint(0, block_len - length + 1, (batch,), generator=gen).to(index_dtype).to(device)
    rows = torch.randint(0, block_batch, (batch,), generator=gen).to(index_dtype).to(device)
    return caches, blocks, dict(dst_start=dst, src_start=src, src_rows=rows, length=length, layout=layout)


def assert_all_equal(actual, expected):
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert torch.equal(a.cpu(), e.cpu()), f"layer pair {i} differs"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(6))
def test_matches_slice_assignment_random_shapes(seed, dtype, layout):
    index_dtype = torch.int64 if seed % 2 else torch.int32
    caches, blocks, kw = random_case(seed, layout, dtype, index_dtype=index_dtype)
    expected = reference_replace(caches, blocks, **kw)
    ik.kv_block_replace(caches, blocks, **kw)
    assert_all_equal(caches, expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_scalar_offsets_and_default_length(layout):
    gen = torch.Generator().manual_seed(1)
    caches, blocks = make_pairs(gen, batch=3, block_batch=3, cache_len=20, block_len=6, heads=[2, 2, 4, 4],
                                head_sizes=[8, 8, 8, 8], layout=layout, dtype=torch.float32)
    expected = reference_replace(caches, blocks, 11, layout=layout)
    ik.kv_block_replace(caches, blocks, 11, layout=layout)
    assert_all_equal(caches, expected)


def test_winner_block_broadcast_to_every_row_with_repeats():
    """The lookahead commit: every cache row receives candidate 2's block."""
    gen = torch.Generator().manual_seed(2)
    caches, blocks = make_pairs(gen, batch=4, block_batch=5, cache_len=16, block_len=4, heads=[3] * 4,
                                head_sizes=[4] * 4, layout="bhtd", dtype=torch.bfloat16)
    rows = torch.full((4,), 2, dtype=torch.int64)
    expected = reference_replace(caches, blocks, 8, src_rows=rows)
    ik.kv_block_replace(caches, blocks, 8, src_rows=rows)
    assert_all_equal(caches, expected)
    for cache in caches:
        for b in range(4):
            assert torch.equal(cache[b, :, 8:12], cache[0, :, 8:12])


def test_source_window_of_a_full_length_candidate_cache():
    """src_start/length select a window of a longer source (e.g. candidates' full caches)."""
    gen = torch.Generator().manual_seed(3)
    caches, blocks = make_pairs(gen, batch=2, block_batch=3, cache_len=32, block_len=32, heads=[2, 2],
                                head_sizes=[16, 16], layout="bthd", dtype=torch.float16)
    rows, dst = torch.tensor([1, 1]), torch.tensor([8, 24])
    kw = dict(src_start=dst, src_rows=rows, length=8, layout="bthd")
    expected = reference_replace(caches, blocks, dst, **kw)
    ik.kv_block_replace(caches, blocks, dst, **kw)
    assert_all_equal(caches, expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_strided_views_into_larger_buffers(layout):
    """Caches as views of a consolidated [layers, 2, B, ...] buffer with padded T and head size;
    blocks as transposes of the other layout; offsets as a strided tensor view."""
    gen = torch.Generator().manual_seed(4)
    layers, batch, heads, cache_len, head_size, block_len = 3, 2, 3, 12, 6, 5
    seq_dim = 2 if layout == "bhtd" else 1
    if layout == "bhtd":
        buffer = torch.randn(layers, 2, batch, heads, cache_len + 3, head_size + 2, generator=gen)
        caches = [buffer[l, kv, :, :, 1 : cache_len + 1, :head_size] for l in range(layers) for kv in range(2)]
        raw = [torch.randn(batch, block_len, heads, head_size, generator=gen) for _ in range(2 * layers)]
    else:
        buffer = torch.randn(layers, 2, batch, cache_len + 3, heads, head_size + 2, generator=gen)
        caches = [buffer[l, kv, :, 1 : cache_len + 1, :, :head_size] for l in range(layers) for kv in range(2)]
        raw = [torch.randn(batch, heads, block_len, head_size, generator=gen) for _ in range(2 * layers)]
    blocks = [r.transpose(1, 2) for r in raw]
    assert not caches[0].is_contiguous() and not blocks[0].is_contiguous()
    assert caches[0].shape[seq_dim] == cache_len and blocks[0].shape[seq_dim] == block_len
    dst = torch.tensor([7, 0, 3, 99])[::2]  # [7, 3], stride 2
    expected_views = reference_replace(caches, blocks, dst, length=4, src_start=1, layout=layout)
    before = buffer.clone()
    ik.kv_block_replace(caches, blocks, dst, length=4, src_start=1, layout=layout)
    assert_all_equal(caches, expected_views)
    # Nothing outside the views changed (padding in T and in the head size).
    changed = buffer != before
    mask = torch.zeros_like(buffer, dtype=torch.bool)
    for l in range(layers):
        for kv in range(2):
            if layout == "bhtd":
                mask[l, kv, :, :, 1 : cache_len + 1, :head_size] = True
            else:
                mask[l, kv, :, 1 : cache_len + 1, :, :head_size] = True
    assert not changed[~mask].any(), "wrote outside the cache views"


def test_dream_3d_cache_through_unsqueeze():
    gen = torch.Generator().manual_seed(5)
    caches = [torch.randn(2, 10, 512, generator=gen) for _ in range(4)]
    blocks = [torch.randn(2, 4, 512, generator=gen) for _ in range(4)]
    expected = [c.clone() for c in caches]
    for e, blk in zip(expected, blocks):
        e[:, 3:7] = blk
    ik.kv_block_replace([c.unsqueeze(2) for c in caches], [b.unsqueeze(2) for b in blocks], 3, layout="bthd")
    assert_all_equal(caches, expected)


def test_repeated_calls_are_deterministic():
    caches, blocks, kw = random_case(11, "bhtd", torch.float32)
    first = [c.clone() for c in caches]
    second = [c.clone() for c in caches]
    ik.kv_block_replace(first, blocks, **kw)
    ik.kv_block_replace(second, blocks, **kw)
    assert_all_equal(first, second)


def test_status_reports_zero_on_success():
    caches, blocks, kw = random_case(12, "bthd", torch.float32)
    expected = reference_replace(caches, blocks, **kw)
    status = torch.full((1,), -7, dtype=torch.int32)
    ik.kv_block_replace(caches, blocks, **kw, status=status)
    assert status.item() == 0
    assert_all_equal(caches, expected)


@pytest.mark.parametrize(
    "bad, bits",
    [
        (dict(dst_start=torch.tensor([0, 13])), STATUS_BAD_DST_START),
        (dict(dst_start=torch.tensor([-1, 0])), STATUS_BAD_DST_START),
        (dict(src_start=torch.tensor([0, 3])), STATUS_BAD_SRC_START),
        (dict(src_rows=torch.tensor([3, 0])), STATUS_BAD_SRC_ROWS),
        (dict(dst_start=torch.tensor([20, 0]), src_rows=torch.tensor([0, -1])), STATUS_BAD_DST_START | STATUS_BAD_SRC_ROWS),
    ],
)
def test_status_flags_bad_offsets_and_writes_nothing(bad, bits):
    gen = torch.Generator().manual_seed(6)
    caches, blocks = make_pairs(gen, batch=2, block_batch=3, cache_len=16, block_len=4, heads=[2, 2], head_sizes=[4, 4],
                                layout="bhtd", dtype=torch.float32)
    kw = dict(dst_start=torch.tensor([0, 12]), src_start=torch.tensor([0, 0]), src_rows=torch.tensor([0, 2]))
    kw.update(bad)
    before = [c.clone() for c in caches]
    status = torch.zeros(1, dtype=torch.int32)
    ik.kv_block_replace(caches, blocks, **kw, status=status)
    assert status.item() == bits
    assert_all_equal(caches, before)


def _valid_case():
    gen = torch.Generator().manual_seed(7)
    caches, blocks = make_pairs(gen, batch=2, block_batch=2, cache_len=12, block_len=4, heads=[2, 2, 3],
                                head_sizes=[8, 8, 8], layout="bhtd", dtype=torch.float32)
    return caches, blocks


def _replace_item(items, i, value):
    items = list(items)
    items[i] = value
    return items


# Each case: (name, function (caches, blocks) -> (caches_arg, blocks_arg, kwargs), error type, text in message).
INVALID = [
    ("empty lists", lambda c, b: ([], [], dict(dst_start=0)), ValueError, "caches must be a non-empty"),
    ("list lengths", lambda c, b: (c, b[:2], dict(dst_start=0)), ValueError, "same length"),
    ("caches not a list", lambda c, b: (c[0], b, dict(dst_start=0)), TypeError, "caches must be a list"),
    ("non-tensor block", lambda c, b: (c, _replace_item(b, 1, 3.0), dict(dst_start=0)), TypeError, "blocks[1]"),
    ("3-D cache", lambda c, b: (_replace_item(c, 1, c[1][0]), b, dict(dst_start=0)), ValueError, "caches[1] must have 4"),
    ("integer caches", lambda c, b: ([x.long() for x in c], b, dict(dst_start=0)), TypeError, "caches[0] must have dtype"),
    ("float64 caches", lambda c, b: ([x.double() for x in c], [x.double() for x in b], dict(dst_start=0)), TypeError,
     "float32, bfloat16 or float16"),
    ("block dtype", lambda c, b: (c, _replace_item(b, 2, b[2].half()), dict(dst_start=0)), TypeError, "blocks[2] has dtype"),
    ("cache dtypes differ", lambda c, b: (_replace_item(c, 1, c[1].half()), _replace_item(b, 1, b[1].half()),
                                          dict(dst_start=0)), TypeError, "caches[1] has dtype"),
    ("block device", lambda c, b: (c, _replace_item(b, 1, b[1].to("meta")), dict(dst_start=0)), ValueError,
     "blocks[1] is on meta"),
    ("cache batch", lambda c, b: (_replace_item(c, 2, c[2][:1]), b, dict(dst_start=0)), ValueError, "caches[2] has batch size"),
    ("block batch", lambda c, b: (c, _replace_item(b, 1, b[1][:1]), dict(dst_start=0)), ValueError, "blocks[1] has batch size"),
    ("cache length", lambda c, b: (_replace_item(c, 1, c[1][:, :, :10]), b, dict(dst_start=0)), ValueError,
     "caches[1] has sequence length"),
    ("block length", lambda c, b: (c, _replace_item(b, 2, b[2][:, :, :3]), dict(dst_start=0)), ValueError,
     "blocks[2] has sequence length"),
    ("heads differ in a pair", lambda c, b: (c, _replace_item(b, 2, b[2][:, :2]), dict(dst_start=0)), ValueError,
     "blocks[2] has shape"),
    ("head size differs in a pair", lambda c, b: (c, _replace_item(b, 0, b[0][..., :4]), dict(dst_start=0)), ValueError,
     "blocks[0] has shape"),
    ("last dim strided", lambda c, b: (_replace_item(c, 1, torch.zeros(2, 2, 12, 16)[..., ::2]), b, dict(dst_start=0)),
     ValueError, "caches[1] must be contiguous in its last"),
    ("expanded cache", lambda c, b: (_replace_item(c, 0, c[0][:1].expand(2, -1, -1, -1)), b, dict(dst_start=0)), ValueError,
     "caches[0] has internally overlapping"),
    ("block aliases a cache", lambda c, b: (c, _replace_item(b, 1, c[0][:, :, 2:6]), dict(dst_start=0)), ValueError,
     "blocks[1] overlaps"),
    ("dst_start too large", lambda c, b: (c, b, dict(dst_start=9)), ValueError, "dst_start must be in [0, 8]"),
    ("dst_start negative", lambda c, b: (c, b, dict(dst_start=-1)), ValueError, "dst_start must be in"),
    ("src_start with full length", lambda c, b: (c, b, dict(dst_start=0, src_start=1)), ValueError, "src_start must be in [0, 0]"),
    ("src_start past the block", lambda c, b: (c, b, dict(dst_start=0, src_start=3, length=2)), ValueError,
     "src_start must be in [0, 2]"),
    ("dst_start tensor entry", lambda c, b: (c, b, dict(dst_start=torch.tensor([0, 9]))), ValueError,
     "dst_start has entries outside"),
    ("src_start tensor entry", lambda c, b: (c, b, dict(dst_start=0, src_start=torch.tensor([-2, 0]))), ValueError,
     "src_start has entries outside"),
    ("src_rows entry", lambda c, b: (c, b, dict(dst_start=0, src_rows=torch.tensor([0, 2]))), ValueError,
     "src_rows has entries outside [0, 1]"),
    ("src_rows negative", lambda c, b: (c, b, dict(dst_start=0, src_rows=torch.tensor([-1, 0]))), ValueError,
     "src_rows has entries outside"),
    ("src_rows float", lambda c, b: (c, b, dict(dst_start=0, src_rows=torch.tensor([0.0, 1.0]))), TypeError,
     "src_rows must have dtype int64 or int32"),
    ("src_rows shape", lambda c, b: (c, b, dict(dst_start=0, src_rows=torch.tensor([0, 1, 1]))), ValueError,
     "src_rows must have shape [2]"),
    ("src_rows not a tensor", lambda c, b: (c, b, dict(dst_start=0, src_rows=[0, 1])), TypeError, "src_rows must be"),
    ("dst_start 2-D", lambda c, b: (c, b, dict(dst_start=torch.zeros(2, 1, dtype=torch.long))), ValueError,
     "dst_start must have shape [2]"),
    ("dst_start device", lambda c, b: (c, b, dict(dst_start=torch.zeros(2, dtype=torch.long, device="meta"))), ValueError,
     "dst_start is on meta"),
    ("dst_start float", lambda c, b: (c, b, dict(dst_start=1.0)), TypeError, "dst_start must be an int"),
    ("dst_start bool", lambda c, b: (c, b, dict(dst_start=True)), TypeError, "dst_start must be an int"),
    ("src_start uint8", lambda c, b: (c, b, dict(dst_start=0, src_start=torch.zeros(2, dtype=torch.uint8))), TypeError,
     "src_start must have dtype"),
    ("block batch without src_rows", lambda c, b: (c, [torch.cat([x, x]) for x in b], dict(dst_start=0)), ValueError,
     "pass src_rows"),
    ("length zero", lambda c, b: (c, b, dict(dst_start=0, length=0)), ValueError, "length must be >= 1"),
    ("length past block", lambda c, b: (c, b, dict(dst_start=0, length=5)), ValueError, "exceeds the blocks"),
    ("length past cache", lambda c, b: ([x[:, :, :3] for x in c], b, dict(dst_start=0)), ValueError, "exceeds the caches"),
    ("length float", lambda c, b: (c, b, dict(dst_start=0, length=2.0)), TypeError, "length must be an int"),
    ("layout", lambda c, b: (c, b, dict(dst_start=0, layout="bhdt")), ValueError, "layout must be one of"),
    ("layout wrong for shapes", lambda c, b: (c, b, dict(dst_start=0, layout="bthd")), ValueError, "blocks[0] has shape"),
    ("status dtype", lambda c, b: (c, b, dict(dst_start=0, status=torch.zeros(1, dtype=torch.long))), TypeError,
     "status must have dtype int32"),
    ("status shape", lambda c, b: (c, b, dict(dst_start=0, status=torch.zeros(2, dtype=torch.int32))), ValueError,
     "status must have exactly one element"),
]


@pytest.mark.parametrize("name, build, error, text", INVALID, ids=[case[0] for case in INVALID])
def test_invalid_input_raises_and_writes_nothing(name, build, error, text):
    caches, blocks = _valid_case()
    caches_arg, blocks_arg, kwargs = build(caches, blocks)
    before = [c.clone() for c in caches]
    with pytest.raises(error) as info:
        ik.kv_block_replace(caches_arg, blocks_arg, **kwargs)
    assert text in str(info.value)
    assert_all_equal(caches, before)


@pytest.mark.parametrize(
    "args, kwargs, text",
    [
        ((torch.tensor([0, 9]), None, None), {}, "dst_start has entries outside"),
        ((None, None, torch.tensor([5, 0])), {}, "src_rows has entries outside"),
        ((None, None, None), dict(dst_start_scalar=100), "dst_start must be in"),
        ((None, None, None), dict(src_start_scalar=-3, length=1), "src_start must be in"),
        ((None, None, None), dict(length=-1), "length must be >= 1"),
    ],
)
def test_direct_op_call_refuses_out_of_bounds(args, kwargs, text):
    caches, blocks = _valid_case()
    before = [c.clone() for c in caches]
    with pytest.raises(ValueError, match=text.replace("[", r"\[")):
        torch.ops.infogain.kv_block_replace(caches, blocks, *args, **kwargs)
    assert_all_equal(caches, before)


def test_fake_tensor_mode_checks_shapes_without_data():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        caches = [torch.empty(2, 4, 16, 8) for _ in range(2)]
        blocks = [torch.empty(2, 4, 4, 8) for _ in range(2)]
        ik.kv_block_replace(caches, blocks, torch.zeros(2, dtype=torch.long))
        with pytest.raises(ValueError, match="blocks\\[1\\] has shape"):
            ik.kv_block_replace(caches, [blocks[0], torch.empty(2, 3, 4, 8)], 0)


def test_inside_torch_compile():
    caches, blocks, kw = random_case(13, "bhtd", torch.float32)
    expected = reference_replace(caches, blocks, **kw)

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(caches, blocks, dst, src, rows):
        ik.kv_block_replace(caches, blocks, dst, src_start=src, src_rows=rows, length=kw["length"])

    step(caches, blocks, kw["dst_start"], kw["src_start"], kw["src_rows"])
    assert_all_equal(caches, expected)


# ----------------------------------------------------------------------------------------- CUDA


@pytest.mark.gpu
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", range(4))
def test_cuda_matches_slice_assignment(seed, dtype, layout):
    if not _C.with_cuda:
        pytest.skip("extension built without CUDA")
    caches, blocks, kw = random_case(seed, layout, dtype, device="cuda", index_dtype=(torch.int32, torch.int64)[seed % 2])
    expected = reference_replace([c.cpu() for c in caches], [b.cpu() for b in blocks],
                                 **{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    ik.kv_block_replace(caches, blocks, **kw)
    assert_all_equal(caches, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("head_size, offset", [(128, 0), (64, 4), (3, 0), (12, 2)])
def test_cuda_vector_widths_and_misaligned_views(head_size, offset):
    """16-byte copies where aligned; narrower ones for odd head sizes or storage offsets."""
    gen = torch.Generator().manual_seed(head_size)
    buf_c = torch.randn(2 * 3 * 20 * head_size + offset, generator=gen).half().cuda()
    cache = buf_c[offset:].view(2, 3, 20, head_size)
    block = torch.randn(2, 3, 5, head_size, generator=gen).half().cuda()
    expected = reference_replace([cache.cpu()], [block.cpu()], torch.tensor([2, 15]))
    ik.kv_block_replace([cache], [block], torch.tensor([2, 15], device="cuda"))
    assert_all_equal([cache], expected)


@pytest.mark.gpu
def test_cuda_many_layers_in_several_chunks():
    caches, blocks = make_pairs(torch.Generator().manual_seed(0), batch=2, block_batch=2, cache_len=8, block_len=2,
                                heads=[2] * 300, head_sizes=[8] * 300, layout="bhtd", dtype=torch.bfloat16, device="cuda")
    expected = reference_replace([c.cpu() for c in caches], [b.cpu() for b in blocks], 5)
    ik.kv_block_replace(caches, blocks, 5)
    assert_all_equal(caches, expected)


@pytest.mark.gpu
def test_cuda_status_flags_bad_offsets_and_writes_nothing():
    caches, blocks, kw = random_case(3, "bthd", torch.bfloat16, device="cuda")
    before = [c.clone() for c in caches]
    kw["src_rows"] = kw["src_rows"].clone()
    kw["src_rows"][-1] = 99
    kw["dst_start"] = kw["dst_start"].clone()
    kw["dst_start"][0] = -1
    status = torch.zeros(1, dtype=torch.int32, device="cuda")
    ik.kv_block_replace(caches, blocks, **kw, status=status)
    assert status.item() == STATUS_BAD_DST_START | STATUS_BAD_SRC_ROWS
    assert_all_equal(caches, before)
    good = random_case(3, "bthd", torch.bfloat16, device="cuda")[2]
    ik.kv_block_replace(caches, blocks, **good, status=status)
    assert status.item() == 0


@pytest.mark.gpu
def test_cuda_graph_capture_and_replay_with_new_offsets():
    gen = torch.Generator().manual_seed(9)
    caches, blocks = make_pairs(gen, batch=3, block_batch=4, cache_len=64, block_len=8, heads=[4] * 6,
                                head_sizes=[64] * 6, layout="bhtd", dtype=torch.bfloat16, device="cuda")
    dst = torch.zeros(3, dtype=torch.long, device="cuda")
    rows = torch.zeros(3, dtype=torch.long, device="cuda")
    status = torch.zeros(1, dtype=torch.int32, device="cuda")
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ik.kv_block_replace(caches, blocks, dst, src_rows=rows, status=status)  # warm-up outside capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ik.kv_block_replace(caches, blocks, dst, src_rows=rows, status=status)
    for new_dst, new_rows in (([0, 8, 56], [3, 3, 1]), ([40, 16, 24], [0, 2, 2])):
        expected = reference_replace([c.cpu() for c in caches], [b.cpu() for b in blocks], torch.tensor(new_dst),
                                     src_rows=torch.tensor(new_rows))
        dst.copy_(torch.tensor(new_dst))
        rows.copy_(torch.tensor(new_rows))
        graph.replay()
        torch.cuda.synchronize()
        assert status.item() == 0
        assert_all_equal(caches, expected)
