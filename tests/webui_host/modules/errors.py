"""The WebUI's error reporter: prints and carries on."""

import logging

reported: list[str] = []


def report(message: str, exc_info: bool = False) -> None:
    reported.append(message)
    logging.getLogger("webui").error(message, exc_info=exc_info)
