"""Where the widget (static/) and the page templates (templates/) are.

From a checkout (or an editable install) they are beside the package; after `pip install .`
setup.py copied them into the package as gchat/_data/.
"""

import os

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def asset_dir(name: str) -> str:
    installed = os.path.join(_PACKAGE_DIR, "_data", name)
    if os.path.isdir(installed):
        return installed
    return os.path.join(os.path.dirname(_PACKAGE_DIR), name)


def static_dir() -> str:
    return asset_dir("static")


def template_dir() -> str:
    return asset_dir("templates")
