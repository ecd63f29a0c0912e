"""Scripts: the Script base class and the runner that calls each hook of each AlwaysVisible
script with its slice of ``p.script_args``, inside a try/except that only reports."""

import re
from collections import namedtuple

from modules import errors

AlwaysVisible = object()
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list = []

# Set by a test to stand in for a WebUI older than 1.10 (no per-pass hook).
PER_PASS_HOOK = True


class Script:
    name = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    group = None
    infotext_fields = None
    paste_field_names = None

    def title(self):
        raise NotImplementedError

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def before_hr(self, p, *args):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def elem_id(self, item_id):
        need_tabname = self.show(True) == self.show(False)
        tabname = f"{'img2img' if self.is_img2img else 'txt2img'}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"


class ScriptRunner:
    def __init__(self):
        self.alwayson_scripts = []
        self.inputs = [None]
        self.infotext_fields = []
        self.paste_field_names = []

    def initialize_scripts(self, is_img2img):
        for data in scripts_data:
            script = data.script_class()
            script.filename = data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            if script.show(is_img2img) == AlwaysVisible:
                script.alwayson = True
                self.alwayson_scripts.append(script)

    def setup_ui(self):
        """Build each script's controls; ``args_from``/``args_to`` index ``p.script_args``."""
        for script in self.alwayson_scripts:
            script.args_from = len(self.inputs)
            controls = script.ui(script.is_img2img)
            script.name = script.title().lower()
            if script.infotext_fields is not None:
                self.infotext_fields += script.infotext_fields
            if script.paste_field_names is not None:
                self.paste_field_names += script.paste_field_names
            self.inputs += controls
            script.args_to = len(self.inputs)

    def _run(self, hook, p, *extra, **kwargs):
        for script in self.alwayson_scripts:
            if hook == "process_before_every_sampling" and not PER_PASS_HOOK:
                continue
            try:
                args = p.script_args[script.args_from : script.args_to]
                getattr(script, hook)(p, *extra, *args, **kwargs)
            except Exception:
                errors.report(f"Error running {hook}: {script.filename}", exc_info=True)

    def setup_scrips(self, p):
        self._run("setup", p)

    def before_process(self, p):
        self._run("before_process", p)

    def process(self, p):
        self._run("process", p)

    def before_process_batch(self, p, **kwargs):
        self._run("before_process_batch", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._run("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p, **kwargs):
        self._run("process_before_every_sampling", p, **kwargs)

    def before_hr(self, p):
        self._run("before_hr", p)

    def postprocess_batch(self, p, images, **kwargs):
        self._run("postprocess_batch", p, images=images, **kwargs)

    def postprocess(self, p, processed):
        self._run("postprocess", p, processed)
