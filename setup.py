"""Build: Cython kernel from pyx/ into the kernel package, gRPC stubs from proto/ into server/.

Generated files (pyx/layout.pxi, pyx/*.c, server/*_pb2*.py) are written at build time and never
committed.
"""
import os
import runpy
import sys
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent


def write_layout_pxi():
    """pyx/layout.pxi (cdef enum constants) from kernel/layout.py, the single source of the layout."""
    layout = runpy.run_path(str(HERE / "kernel" / "layout.py"))
    target = HERE / "pyx" / "layout.pxi"
    text = layout["pxi_text"]()
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def generate_grpc_stubs():
    """server/*_pb2.py and *_pb2_grpc.py from proto/medsettle/v1/, with grpcio-tools.

    The include path maps proto/medsettle/v1 to the virtual directory `server`, so the generated
    modules land flat in the `server` package and import each other as `from server import ...`.
    """
    protos = sorted((HERE / "proto").glob("medsettle/v1/*.proto"))
    if not protos:
        return
    from grpc_tools import protoc
    import grpc_tools
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    for proto in protos:
        rc = protoc.main(["grpc_tools.protoc", f"-Iserver={HERE / 'proto' / 'medsettle' / 'v1'}",
                          f"-I{include}", f"--python_out={HERE}", f"--grpc_python_out={HERE}",
                          f"--pyi_out={HERE}", str(proto)])
        if rc != 0:
            sys.exit(f"protoc failed on {proto}")


class BuildPy(build_py):
    def run(self):
        generate_grpc_stubs()
        super().run()


write_layout_pxi()
generate_grpc_stubs()

COMPILE_ARGS = ["-O3", "-fno-strict-aliasing"]
if os.environ.get("MEDSETTLE_NATIVE"):          # opt-in: tune for the build machine only
    COMPILE_ARGS.append("-march=native")

extensions = [
    Extension(f"kernel._{src.stem}", [str(src.relative_to(HERE))],
              include_dirs=[np.get_include()],
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
              extra_compile_args=COMPILE_ARGS)
    for src in sorted((HERE / "pyx").glob("*.pyx"))
]

# The real-time path's Python modules, compiled as they are (no Cython syntax in them): a settlement
# over gRPC runs their per-call code (request conversion, the one-visit checks, the fund rows'
# texts, the caller's token, the ledger's cache and group commit), where the interpreter's own
# overhead is most of the cost. The .py files are installed beside their compiled modules, which
# import first. server/server.py too: Cython 3 marks its async def and async generator methods so
# that inspect, which gRPC asks to tell a coroutine handler from a blocking one, still says so.
REALTIME_MODULES = ["kernel/adapter.py", "kernel/api.py", "kernel/detail.py", "server/convert.py",
                    "server/ledger.py", "server/security.py", "server/server.py"]
realtime = [Extension(path[:-3].replace("/", "."), [path], extra_compile_args=["-O2"])
            for path in REALTIME_MODULES]

setup(
    ext_modules=cythonize(extensions, include_path=[str(HERE / "pyx")], language_level=3,
                          compiler_directives={"boundscheck": False, "wraparound": False,
                                               "cdivision": True, "initializedcheck": False})
    + cythonize(realtime, language_level=3, nthreads=2, compiler_directives={"binding": True}),
    cmdclass={"build_py": BuildPy},
    options={"build_ext": {"parallel": 2}},
)
