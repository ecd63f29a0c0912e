"""Parsing generation info back into a dict of key -> value (strings), as "PNG Info" does."""

import json
import re

re_param = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(text):
    *prompt_lines, last = text.strip().split("\n")
    result = {"Prompt": "\n".join(prompt_lines)}
    for key, value in re_param.findall(last):
        result[key.strip()] = unquote(value.strip())
    return result


def paste(fields, params):
    """Apply ``infotext_fields`` to parsed params: each (component, key or callable) pair gives
    the value the component would receive (None means 'leave unchanged')."""
    values = {}
    for component, key in fields:
        value = key(params) if callable(key) else params.get(key)
        values[component] = value
    return values
