"""Boot the stand-in WebUI with this extension loaded, as the real one does at start-up."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOST = Path(__file__).resolve().parent


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def boot():
    """Load the built-in xyz_grid.py and the extension's scripts; return the scripts module.

    The WebUI names script modules by their file name and puts the extension's folder on
    sys.path while importing it.
    """
    from modules import script_callbacks, scripts

    script_callbacks.clear()
    scripts.scripts_data.clear()
    for path, basedir in (
        (HOST / "builtin_scripts" / "xyz_grid.py", HOST),
        (ROOT / "scripts" / "deepcache.py", ROOT),
    ):
        sys.path.insert(0, str(basedir))
        try:
            module = load_module(path, path.name)
        finally:
            sys.path.remove(str(basedir))
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, scripts.Script)
                and value is not scripts.Script
            ):
                scripts.scripts_data.append(
                    scripts.ScriptClassData(value, str(path), str(basedir), module)
                )
        if path.name == "xyz_grid.py":
            xyz = module
    script_callbacks.before_component_callback(None)  # the UI's first component
    return xyz


def runner(is_img2img):
    import gradio as gr
    from modules import scripts

    r = scripts.ScriptRunner()
    r.initialize_scripts(is_img2img)
    with gr.Blocks():
        r.setup_ui()
    return r


def defaults(r):
    """The script args a generation gets when the user changes nothing: the controls' values."""
    return [getattr(c, "value", None) for c in r.inputs]
