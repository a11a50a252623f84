import importlib


def test_both_packages_import():
    kernels = importlib.import_module("infogain_kernels")
    api = importlib.import_module("infogain")
    assert kernels.__version__ == api.__version__


def test_extension_module_builds():
    ext = importlib.import_module("infogain_kernels._C")
    assert isinstance(ext.with_cuda, bool)


def test_ops_go_through_the_dispatcher_only_while_something_traces():
    # Eager calls run the op body directly (no dispatcher round trip); under a
    # dispatch mode (here FakeTensorMode) the tracer must see the registered op
    # and its fake implementation instead.
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    import infogain_kernels

    class RecordOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.append(func.namespace)
            return func(*args, **(kwargs or {}))

    logits = torch.randn(3, 5, 11)
    with RecordOps() as recorder:
        entropy = infogain_kernels.token_stats(logits, check_values=False)[0]
    assert "infogain" in recorder.seen
    torch.testing.assert_close(entropy, torch.special.entr(logits.softmax(-1)).sum(-1))

    with FakeTensorMode() as mode:
        fake = mode.from_tensor(logits)
        entropy, top1_prob, top1_id, top2_prob = infogain_kernels.token_stats(fake, check_values=False)
        J, h_next = infogain_kernels.lookahead_objective(fake, torch.ones(3, 5, dtype=torch.bool), None,
                                                         variant="lookum", check_values=False)
    assert entropy.shape == (3, 5) and top1_id.dtype == torch.int64 and J.shape == (3,)
