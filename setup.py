"""Package discovery for declab's namespace layout (metadata lives in pyproject.toml).

The top-level folders ``plugins/``, ``integrations/`` and ``patches/`` become ``declab.plugins``,
``declab.integrations`` and ``declab.patches`` with every sub-package found in them, so a new plugin folder is
packaged without editing anything here. Nothing called ``plugins`` or ``patches`` lands at the top of site-packages.
"""

from setuptools import find_packages, setup

ROOTS = {"declab.plugins": "plugins", "declab.integrations": "integrations", "declab.patches": "patches"}
# Data files a package folder may carry (plugin READMEs, demo data, committed measurements, the bundled model).
DATA = ["*.md", "*.json", "*.jinja", "measurements/*", "default_model/decoder-29m/*", "decoder-29m/*",
        "default_model/draft-5m-long/*", "draft-5m-long/*", "amateur/*", "*.safetensors"]


def discover_packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for package, folder in ROOTS.items():
        package_dir[package] = folder
        packages.append(package)
        packages += [f"{package}.{sub}" for sub in find_packages(folder)]
    return packages, package_dir


if __name__ == "__main__":
    packages, package_dir = discover_packages()
    setup(packages=packages, package_dir=package_dir, package_data={p: DATA for p in packages})
