"""The silent assistant: a service that contours every new CT series in a PACS and stores an RTSTRUCT back.

    oncoseg assistant --pacs http://127.0.0.1:8042 --state /var/lib/oncoseg/state.db

    from oncoseg.assistant import Assistant, AssistantConfig
    Assistant(AssistantConfig(pacs_url="http://127.0.0.1:8042")).run()

Names are imported on first use (``oncoseg --help`` stays fast).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Assistant": "service", "AssistantConfig": "service", "result_uids": "service", "run_assistant": "service",
    "AuditLog": "audit", "scrub": "audit", "uid_tag": "audit",
    "StateStore": "state", "series_key": "state",
    "StoreSCP": "scp",
}  # fmt: skip

__all__ = [
    "Assistant",
    "AssistantConfig",
    "AuditLog",
    "StateStore",
    "StoreSCP",
    "result_uids",
    "run_assistant",
    "scrub",
    "series_key",
    "uid_tag",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"oncoseg.assistant.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'oncoseg.assistant' has no attribute {name!r}")
