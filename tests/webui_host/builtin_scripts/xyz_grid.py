"""The built-in X/Y/Z plot: axis options, and one sweep over a single axis."""

from modules import processing, scripts


class AxisOption:
    def __init__(
        self,
        label,
        type,
        apply,
        format_value=None,
        confirm=None,
        cost=0.0,
        choices=None,
        prepare=None,
    ):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


def apply_field(field):
    def fun(p, x, xs):
        setattr(p, field, x)

    return fun


axis_options = [
    AxisOption("Nothing", str, lambda p, x, xs: None),
    AxisOption("Steps", int, apply_field("steps")),
    AxisOption("Seed", int, apply_field("seed")),
]


def run_axis(p, label, raw_values):
    """Parse the comma-separated values like the grid does, confirm them, and run each cell."""
    option = next(o for o in axis_options if o.label == label)
    values = [option.type(v.strip()) for v in raw_values.split(",")]
    if option.confirm:
        option.confirm(p, values)
    results = []
    for value in values:
        cell = processing.copy_for_cell(p)
        option.apply(cell, value, values)
        results.append(processing.process_images(cell))
    return results


class Script(scripts.Script):
    """The selectable "X/Y/Z plot" script (not always visible)."""

    def title(self):
        return "X/Y/Z plot"
