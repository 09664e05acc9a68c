"""`oneiric-session status [--json]`: the resolved provider and why, each effective setting and its source."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from oneiric_session.config.files import shown_path
from oneiric_session.config.sources import NO_SETTINGS_DIR

if TYPE_CHECKING:
    from oneiric_session.config.loader import LoadedConfig
    from oneiric_session.tracking.registry import Registry


NO_SETTINGS_DIR_SAID = "none (the working directory no longer exists, so no ./settings)"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "status", help="show the resolved provider and why, and every effective setting with its source"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from oneiric_session.common.safetext import safe_lines

    report = collect(args.settings)
    # JSON escapes every control (ensure_ascii); the text form is made safe line by line.
    print(json.dumps(report, indent=2) if args.json else safe_lines(render(report)))
    return 0


def collect(
    settings_dir: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    registry: Registry | None = None,
) -> dict[str, Any]:
    """The status report as plain data; raises ConfigError."""
    from oneiric_session.config.loader import load_config
    from oneiric_session.tracking.registry import CATEGORY, DOMAIN, default_registry

    config = load_config(settings_dir, environ=environ)
    registry = registry or default_registry()
    source = config.source_of("provider")
    registry.resolve(config.provider, selection_source=source)  # unknown provider: ConfigError
    values = config.values()
    no_settings_dir = config.settings_dir == NO_SETTINGS_DIR
    return {
        "provider": {"name": config.provider, "source": source},
        "ranking": {
            "domain": DOMAIN,
            "category": CATEGORY,
            "candidates": [r.as_dict() for r in registry.explain(config.provider, selection_source=source)],
        },
        # None: the working directory was deleted, so there is no ./settings (sources.NO_SETTINGS_DIR).
        "settings_dir": None if no_settings_dir else str(config.settings_dir),
        "files": [
            {"path": str(path), "present": present}
            for path, present in config.files
            if not (no_settings_dir and path.is_relative_to(config.settings_dir))
        ],
        "settings": {
            name: {"value": values[name], "source": config.sources[name]} for name in sorted(values)
        },
        "token": token_section(config),
        "delivery": delivery_section(config),
    }


def token_section(config: LoadedConfig) -> dict[str, Any]:
    """Where the token would come from and whether one is there; never the token itself."""
    settings = config.settings
    return {
        "env": settings.token_env,
        "file": shown_path(settings.token_file) if settings.token_file else None,
        "available": config.token() is not None,
    }


def delivery_section(config: LoadedConfig) -> dict[str, Any]:
    """The agent (running, pid), the breaker, the spool's depth, oldest event, dead letters and drops."""
    from oneiric_session.agent.status import delivery_status

    return delivery_status(config.spool_path(), destination_key=config.destination().key)


def render(report: Mapping[str, Any]) -> str:
    provider = report["provider"]
    ranking = report["ranking"]
    lines = [
        f"provider: {provider['name']}  ({provider['source']})",
        f"settings directory: {report['settings_dir'] or NO_SETTINGS_DIR_SAID}",
        "files:",
        *(f"  {'read  ' if f['present'] else 'absent'}  {f['path']}" for f in report["files"]),
        f"ranking ({ranking['domain']}/{ranking['category']}, best first):",
    ]
    width = max((len(c["provider"]) for c in ranking["candidates"]), default=0)
    for c in ranking["candidates"]:
        mark = "*" if c["selected"] else " "
        lines.append(f"  {mark} {c['provider']:<{width}}  {'; '.join(c['reasons'])}")
    lines.append("settings:")
    width = max((len(name) for name in report["settings"]), default=0)
    for name, entry in report["settings"].items():
        lines.append(f"  {name:<{width}}  {json.dumps(entry['value']):<24}  {entry['source']}")
    token = report["token"]
    where = f"${token['env']}" + (f" or {token['file']}" if token["file"] else "")
    lines.append(f"token: {'available' if token['available'] else 'none'} (from {where})")
    lines.append("delivery:")
    for key, value in report["delivery"].items():
        if key == "warnings":
            lines += [f"  warning: {warning}" for warning in value]
        else:
            lines.append(f"  {key}: {value}")
    return "\n".join(lines)
