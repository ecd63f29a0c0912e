"""The WebUI's InputAccordion: a checkbox that is also an accordion's header (>= 1.7).

A hidden checkbox carries the value; the accordion is entered as a context. The header tick box
is drawn by the page's JavaScript, which this stand-in does not need.
"""

import gradio as gr


class InputAccordion(gr.Checkbox):
    global_index = 0

    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get("elem_id")
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordion.global_index}"
            InputAccordion.global_index += 1
        checkbox_args = {
            **kwargs,
            "elem_id": f"{self.accordion_id}-checkbox",
            "visible": False,
        }
        super().__init__(value, **checkbox_args)
        self.accordion = gr.Accordion(
            kwargs.get("label", "Accordion"),
            open=value,
            elem_id=self.accordion_id,
            elem_classes=["input-accordion"],
        )

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, *args):
        self.accordion.__exit__(*args)

    def get_block_name(self):
        return "checkbox"
