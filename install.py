"""Run by the WebUI when the extension is installed or the WebUI starts.

DeepCache needs only torch and gradio, which every supported WebUI already has, so there is
nothing to install: this stays a no-op instead of touching the WebUI's environment.
"""
