"""The WebUI side: one adapter per host behind :class:`HostAdapter` (:mod:`.a1111`,
:mod:`.forge`, :mod:`.sdnext`; :mod:`.registry` picks one), and what every host shares: the
script's args and infotext (:mod:`.script_args`), the API guard, the X/Y/Z axes, the accordion
(:mod:`.ui`), the console, and the :class:`Controller` the script calls.

Host modules import the engine and the shared modules, never each other; the WebUI's own
``modules`` are reached only through :mod:`.webui`.
"""
