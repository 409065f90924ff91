"""qkv's optional CPU kernels (src/qkv/native/kernels.c), built by `pip install` in seconds. `optional=True`:
where no C compiler is found, qkv installs without them and its quantized layers use PyTorch's kernels."""

from setuptools import Extension, setup

NATIVE = ["kernels.c", "half.c", "pool.c", "decode.c"]

setup(ext_modules=[Extension("qkv.native._kernels", [f"src/qkv/native/{name}" for name in NATIVE], optional=True,
                             depends=["src/qkv/native/kernels.h"], extra_compile_args=["-O3", "-ffp-contract=off",
                             "-pthread"], extra_link_args=["-pthread"], libraries=["m"])])
