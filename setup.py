"""qkv's optional CPU kernels (src/qkv/native/kernels.c), built by `pip install` in seconds. `optional=True`:
where no C compiler is found, qkv installs without them and its quantized layers use PyTorch's kernels."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("qkv.native._kernels", ["src/qkv/native/kernels.c"], optional=True,
                             extra_compile_args=["-O3", "-ffp-contract=off"], libraries=["m"])])
