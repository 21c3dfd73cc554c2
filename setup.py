"""Package discovery (the rest of the metadata is in pyproject.toml).

Every package under ``persona_refusal/`` is found, and so is every package under the
top-level ``analysis/`` folder, which installs as ``persona_refusal.analysis`` (the
``package-dir`` mapping in pyproject.toml). setuptools' declarative ``find`` cannot
rename a tree, hence these few lines.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["persona_refusal", "persona_refusal.*"]),
        "persona_refusal.analysis",
        *(f"persona_refusal.analysis.{p}" for p in find_packages("analysis")),
    ],
)
