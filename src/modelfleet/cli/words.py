"""SDK messages said in the CLI's words: flags and commands instead of keywords and calls.

The SDK's errors name what an SDK user types (``cpu_cores``, ``overwrite=True``,
``Workspace.create(...)``); the CLI prints them with what a CLI user types instead. Each
deploy setting's keyword becomes its flag from the settings table (``spec/deploy.py``).
"""

from __future__ import annotations

import re

from modelfleet.spec.deploy import SETTINGS

_PHRASES = (
    ("open it with Workspace.get(path), pass exist_ok=True, or choose", "use it with `modelfleet -w PATH`, or choose"),
    ("pass exist_ok=True to overwrite it or choose another target_dir", "pass --overwrite, or another --target-dir"),
    ("by calling `.get_logs()` on the webservice object.", "with `modelfleet service logs -n NAME`."),
    ("pass overwrite=True", "pass --overwrite"),
    ("overwrite=True", "--overwrite"),
    ("Workspace.create(name, path) or `modelfleet workspace create -n NAME`", "`modelfleet workspace create -n NAME`"),
    ("Workspace.create(name, path)", "`modelfleet workspace create -n NAME`"),
    ("Workspace.get(PATH)", "`modelfleet -w PATH`"),
    ("use get_keys()", "use `modelfleet service get-keys`"),
    ("get_keys()", "`modelfleet service get-keys`"),
    # endpoints (cli/endpoints.py)
    ("(update_version(other, is_default=True))", "(`modelfleet endpoint version update --is-default`)"),
    ("use update_version", "use `modelfleet endpoint version update`"),
    ("endpoint.create_version(...)", "`modelfleet endpoint version create`"),
)
# keywords with an underscore only: plain words ("tags", "description") read the same in both
_FLAGS = {s.flat: s.flag for s in SETTINGS if "_" in s.flat}
_FLAGS.update(
    {k: "--" + k.replace("_", "-") for k in ("version_name", "traffic_percentile", "is_default", "mirror_percentile")}
)
# `endpoint rollout`'s flags stand for update_version(rollout={...})'s fields (control/rollout.py)
_FLAGS.update(
    {f"rollout.{k}": "--" + k.replace("_", "-") for k in ("steps", "interval_s", "max_error_rate", "max_p99_ms")}
)
_KEYWORD = re.compile(r"(?<![\w.-])(" + "|".join(sorted(map(re.escape, _FLAGS), key=len, reverse=True)) + r")(?![\w(])")


def in_cli_words(message: str) -> str:
    for sdk, cli in _PHRASES:
        message = message.replace(sdk, cli)
    message = _KEYWORD.sub(lambda m: _FLAGS[m.group(1)], message)
    # keyword=value reads as the flag and its value: --autoscale-enabled false
    return re.sub(r"(--[a-z][\w-]*)=(True|False|\S+?)(?=[\s,;)]|$)", _flag_value, message)


def _flag_value(m: re.Match[str]) -> str:
    value = m.group(2)
    return f"{m.group(1)} {value.lower() if value in ('True', 'False') else value}"
