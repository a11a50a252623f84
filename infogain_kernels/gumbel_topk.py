"""Placeholder: being written (see the open issues)."""


def gumbel_topk(*args, **kwargs):
    raise NotImplementedError("gumbel_topk is not implemented yet")
