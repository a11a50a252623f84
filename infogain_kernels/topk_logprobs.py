"""Placeholder: being written (see the open issues)."""


def topk_logprobs(*args, **kwargs):
    raise NotImplementedError("topk_logprobs is not implemented yet")
