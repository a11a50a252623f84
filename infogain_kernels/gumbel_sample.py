"""Placeholder: being written (see the open issues)."""


def gumbel_sample(*args, **kwargs):
    raise NotImplementedError("gumbel_sample is not implemented yet")
