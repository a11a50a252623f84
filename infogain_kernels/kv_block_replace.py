"""Placeholder: being written (see the open issues)."""


def kv_block_replace(*args, **kwargs):
    raise NotImplementedError("kv_block_replace is not implemented yet")
