"""Only the wheel's tag lives here (pyproject.toml has the rest).

The wheel holds no Python extension, only a preloaded library and a
program built for one machine type and a glibc: py3-none-PLATFORM, where
PLATFORM (e.g. manylinux_2_34_x86_64) is written by scripts/package.sh from
the highest GLIBC_ symbol version the two binaries need (objdump -T).
"""

import os

from setuptools import Distribution, setup
from wheel.bdist_wheel import bdist_wheel


class BinaryDistribution(Distribution):
    """A distribution with binaries: its files go to the wheel's root (platlib)."""

    def has_ext_modules(self) -> bool:
        return True


class PlatformWheel(bdist_wheel):
    """bdist_wheel with the tag py3-none-PLATFORM."""

    def get_tag(self) -> "tuple[str, str, str]":
        here = os.path.dirname(os.path.abspath(__file__))
        with open(os.path.join(here, "PLATFORM"), encoding="ascii") as platform:
            return "py3", "none", platform.read().strip()


setup(distclass=BinaryDistribution, cmdclass={"bdist_wheel": PlatformWheel})
