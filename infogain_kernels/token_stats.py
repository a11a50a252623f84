"""Placeholder: being written (see the open issues)."""


def token_stats(*args, **kwargs):
    raise NotImplementedError("token_stats is not implemented yet")
