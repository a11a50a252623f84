"""Placeholder: being written (see the open issues)."""


def sample_logprob(*args, **kwargs):
    raise NotImplementedError("sample_logprob is not implemented yet")
