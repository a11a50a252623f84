import importlib


def test_both_packages_import():
    kernels = importlib.import_module("infogain_kernels")
    api = importlib.import_module("infogain")
    assert kernels.__version__ == api.__version__


def test_extension_module_builds():
    ext = importlib.import_module("infogain_kernels._C")
    assert isinstance(ext.with_cuda, bool)
