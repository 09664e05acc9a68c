"""Oneiric-style resolver for the `session_tracker` category (standard library only).

Candidates are ranked like Oneiric's resolver: the explicitly selected provider
first, then higher priority, then higher stack_level, then the last registered.
The configuration always selects a provider (default `session-buddy`), so an
installed third-party provider never takes over silently: it must be selected.
Third-party providers register through the entry-point group
`oneiric_session.tracking.providers`: each entry point loads a `Candidate`, a list of them,
or a callable returning either. Built-in names are reserved, so selecting a
built-in never scans entry points (~100 ms in a large environment).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec

from oneiric_session.common.record import Record
from oneiric_session.config import shell_view, sources
from oneiric_session.errors import ConfigError

if TYPE_CHECKING:
    from oneiric_session.config.loader import LoadedConfig
    from oneiric_session.config.shell_view import ShellView
    from oneiric_session.tracking.tracker import Tracker

DOMAIN = "adapter"
CATEGORY = sources.CATEGORY
ENTRY_POINT_GROUP = "oneiric_session.tracking.providers"

logger = logging.getLogger("oneiric_session")

P = ParamSpec("P")
Factory = Callable[["LoadedConfig | ShellView | None"], "Tracker"]


# Records (common/record.py): every shell resolves its tracker here.
class Candidate(Record):
    """One provider that can serve the category. `factory` may be "module:attribute", imported on use."""

    provider: str
    factory: Factory | str
    description: str = ""
    priority: int = 0
    stack_level: int = 0
    # False: the factory takes None and the shell never imports pydantic for it.
    needs_config: bool = True
    # True: the factory also takes a `ShellView` (validated settings, cached), so a shell
    # whose settings did not change since they were last validated never imports pydantic.
    takes_view: bool = False
    domain: str = DOMAIN
    category: str = CATEGORY
    origin: str = "manual"

    def create(self, config: LoadedConfig | ShellView | None) -> Tracker:
        factory = self.factory
        if isinstance(factory, str):
            module, _, attribute = factory.partition(":")
            factory = getattr(importlib.import_module(module), attribute)
        return factory(config)


class Ranked(Record):
    """A candidate's place in the ranking and why."""

    candidate: Candidate
    selected: bool
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        c = self.candidate
        return {
            "provider": c.provider,
            "selected": self.selected,
            "priority": c.priority,
            "stack_level": c.stack_level,
            "origin": c.origin,
            "description": c.description,
            "reasons": list(self.reasons),
        }


BUILTINS = (
    Candidate(
        "session-buddy",
        "oneiric_session.tracking.providers.session_buddy:create",
        "Spools events on disk; a per-user agent delivers them to a Session-Buddy MCP server.",
        stack_level=10,
        takes_view=True,
        origin="builtin",
    ),
    Candidate(
        "noop",
        "oneiric_session.tracking.providers.noop:create",
        "Tracking off: records nothing, imports nothing heavy.",
        needs_config=False,
        origin="builtin",
    ),
    Candidate(
        "memory",
        "oneiric_session.tracking.providers.memory:create",
        "Records sessions in this process, for tests.",
        needs_config=False,
        origin="builtin",
    ),
)


class Registry:
    """The candidates for one category, in registration order."""

    def __init__(self, candidates: Iterable[Candidate] = ()) -> None:
        self._candidates: list[Candidate] = []
        for candidate in candidates:
            self.register(candidate)

    def register(self, candidate: Candidate) -> None:
        if not isinstance(candidate, Candidate):
            raise TypeError(f"expected a Candidate, got {type(candidate).__name__}")
        if (candidate.domain, candidate.category) != (DOMAIN, CATEGORY):
            where = f"{candidate.domain}/{candidate.category}"
            raise ValueError(f"candidate {candidate.provider!r} is for {where}, not {DOMAIN}/{CATEGORY}")
        self._candidates.append(candidate)

    def providers(self) -> list[str]:
        return sorted({c.provider for c in self._candidates})

    def explain(self, selection: str | None = None, *, selection_source: str = "argument") -> list[Ranked]:
        """All candidates, best first, each with its reasons; the first is selected if it may be."""
        scored = []
        for sequence, candidate in enumerate(self._candidates, start=1):
            matches = selection is not None and candidate.provider == selection
            reasons = []
            if selection is not None:
                where = sources.describe(selection_source)
                reasons.append(f"selected: provider = {selection!r} ({where})" if matches else "not selected")
            reasons += [
                f"priority {candidate.priority}",
                f"stack_level {candidate.stack_level}",
                f"registered #{sequence} ({candidate.origin})",
            ]
            score = (matches, candidate.priority, candidate.stack_level, sequence)
            scored.append((score, candidate, tuple(reasons)))
        scored.sort(key=lambda item: item[0], reverse=True)
        return [
            Ranked(candidate, selected=index == 0 and (selection is None or score[0]), reasons=reasons)
            for index, (score, candidate, reasons) in enumerate(scored)
        ]

    def resolve(self, selection: str | None = None, *, selection_source: str = "argument") -> Candidate:
        """The winning candidate; ConfigError if the selection names no registered provider."""
        ranking = self.explain(selection, selection_source=selection_source)
        if not ranking or not ranking[0].selected:
            what = f"unknown session tracker provider {selection!r}" if selection else "no provider"
            raise ConfigError(
                f"{what} (from {sources.describe(selection_source)}); "
                f"registered providers: {', '.join(self.providers()) or 'none'}"
            )
        return ranking[0].candidate


BUILTIN_NAMES = frozenset(c.provider for c in BUILTINS)
_defaults: dict[bool, Registry] = {}


def default_registry(*, entry_points: bool = True) -> Registry:
    """The built-ins, then (unless told not to) installed entry points; each built once per process."""
    if entry_points not in _defaults:
        _defaults[entry_points] = Registry([*BUILTINS, *(_entry_point_candidates() if entry_points else ())])
    return _defaults[entry_points]


def _entry_point_candidates() -> list[Candidate]:
    from importlib.metadata import entry_points

    found: list[Candidate] = []
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name):
        try:
            loaded = entry_point.load()
            if callable(loaded) and not isinstance(loaded, Candidate):
                loaded = loaded()
            items = [loaded] if isinstance(loaded, Candidate) else list(loaded)
            if not all(isinstance(item, Candidate) for item in items):
                raise TypeError("expected a Candidate, a list of Candidates, or a callable returning one")
            if reserved := sorted(BUILTIN_NAMES & {item.provider for item in items}):
                raise ValueError(f"provider names {reserved} are built in")
            Registry(items)  # same checks as register(), before any is kept
        except Exception as exc:  # a broken plugin must not break tracking for everyone
            logger.warning(
                "ignoring session tracker entry point %r: %s: %s", entry_point.name, type(exc).__name__, exc
            )
            continue
        found += [item._replace(origin=f"entry point {entry_point.name}") for item in items]
    return found


def build_tracker(
    settings_dir: str | os.PathLike[str] | None = None,
    *,
    provider: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    registry: Registry | None = None,
) -> Tracker:
    """The configured tracker. Raises ConfigError (for the CLI); the shell uses resolve_tracker()."""
    if provider is not None:
        overrides = {**(overrides or {}), "provider": provider}
    env = os.environ if environ is None else environ
    key = shell_view.cache_key(settings_dir, overrides=overrides, environ=env)
    cached = shell_view.read_cached(key, env) if key is not None else None
    if isinstance(cached, shell_view.ShellView):  # validated before: no YAML, no pydantic
        candidate = _resolve(registry, cached.provider, cached.provider_source)
        if candidate.takes_view:
            return candidate.create(cached)
    elif cached is not None:  # the selection of these very inputs, seen before: no YAML either
        candidate = _resolve(registry, *cached)
        if not candidate.needs_config:
            return candidate.create(None)
    from oneiric_session.config import view_store  # (the cache's write side: only at a miss)

    if cached is None:  # a miss: validated now, so older entries go (some a store never follows)
        view_store.prune()
    merged = sources.read(settings_dir, overrides=overrides, environ=env)
    selection = merged.selection()
    candidate = _resolve(registry, *selection)
    if not candidate.needs_config:
        view_store.store(selection, key, settings_dir, overrides=overrides, environ=env)
        return candidate.create(None)
    from oneiric_session.config.loader import validate  # pydantic: only for providers that need settings

    config = validate(merged, environ=env)
    if not candidate.takes_view:
        return candidate.create(config)
    view = shell_view.ShellView.from_config(config)
    view_store.store(view, key, settings_dir, overrides=overrides, environ=env)
    return candidate.create(view)


def _resolve(registry: Registry | None, selection: str, source: str) -> Candidate:
    registry = registry or default_registry(entry_points=selection not in BUILTIN_NAMES)
    return registry.resolve(selection, selection_source=source)


def _or_noop(build: Callable[P, Tracker]) -> Callable[P, Tracker]:
    """`build` (its parameters), never raising."""

    @functools.wraps(build, assigned=("__module__", "__annotations__"))
    def resolve_tracker(*args: P.args, **kwargs: P.kwargs) -> Tracker:
        """The configured tracker; never raises: on any failure, one log line and the noop tracker."""
        try:
            return build(*args, **kwargs)
        except Exception as exc:  # a tracking problem must never stop the shell
            kind = "configuration error" if isinstance(exc, ConfigError) else type(exc).__name__
            from oneiric_session.common.safetext import terminal_safe  # (a plugin's error may hold anything)

            logger.warning("session tracking is off (provider noop): %s: %s", kind, terminal_safe(exc))
            from oneiric_session.tracking.providers.noop import NoopTracker

            return NoopTracker()

    resolve_tracker.__qualname__ = resolve_tracker.__name__
    return resolve_tracker


# What a shell calls: build_tracker()'s parameters, and the noop tracker where it would raise.
resolve_tracker = _or_noop(build_tracker)
