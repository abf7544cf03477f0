"""How the extension was linked (Note [One libstdc++ in the process], python/CMakeLists.txt)."""

import shutil
import subprocess
import sys

import pytest

import mps_threadsafe._C as extension


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF dynamic section")
@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils' readelf")
def test_extension_uses_the_shared_libstdcxx_torch_uses():
    # A private static copy of libstdc++ in the extension crashed every strided copy on torch
    # 2.11 built with a g++ that links libstdc++ statically: torch and the extension must share
    # one libstdc++.so.6.
    dynamic = subprocess.run(["readelf", "-d", extension.__file__], check=True,
                             capture_output=True, text=True).stdout
    needed = [line.split("[", 1)[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert "libstdc++.so.6" in needed, needed
