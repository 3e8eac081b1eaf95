"""The supervisor: runs one graph at a time, swaps it on reload, stops it on signals.

Every long-running task of the daemon lives under the supervisor's task group (the
graph's own task group runs inside it). Shutdown and reload triggers are injectable:
signals by default, plain events in tests.

A reload reads, validates and builds the new config in a worker thread under a time
bound (``reload.timeout_s``): a file is read while decisions, /metrics and systemd's
watchdog go on, and whatever it holds, the worst it can do is a refused reload.

Beside each running graph whose pipelines serve ``store:NAME`` models, a store watch
(``edged.runtime.store_watch``) swaps in what ``edged model install`` or ``rollback``
made current, without a reload, and records what serves in ``serving.json``.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pluggy
import structlog

from edged.base.errors import ComponentStartError, ConfigError
from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.base.sdnotify import Notifier
from edged.base.tasks import cancel_all
from edged.config import EdgedConfig, load_config
from edged.plugin.registry import Registry
from edged.runtime.graph import Graph
from edged.runtime.store_watch import StoreWatch
from edged.runtime.swap import preprocessor_factory

log = structlog.get_logger("edged.supervisor")

#: Builds a graph from a config without starting it (edged.app.assembly.build_graph).
GraphBuilder = Callable[[EdgedConfig, Registry, Counters], Graph]


class Supervisor:
    def __init__(self, config: EdgedConfig, registry: Registry, pm: pluggy.PluginManager,
                 *, build: GraphBuilder, stop: asyncio.Event | None = None,
                 reload: asyncio.Event | None = None,
                 on_graph: Callable[[Graph], None] = lambda graph: None,
                 notifier: Notifier | None = None) -> None:
        self.config = config
        self.registry = registry
        self.pm = pm
        self.counters = Counters()
        # The assembly (edged.app) builds graphs; the engine only runs and swaps them.
        self.build = build
        self.graph = build(config, registry, self.counters)
        self._use_signals = stop is None and reload is None
        self.stop_event = stop or asyncio.Event()
        self.reload_event = reload or asyncio.Event()
        self.on_graph = on_graph  # lets the demo observe every graph it runs
        self.reloads = 0
        self._building: asyncio.Future | None = None  # the last reload's worker-thread build
        self._watch: asyncio.Task | None = None  # the running graph's store watch
        self._refusals = RateLimit()
        # systemd's notify socket and watchdog; a no-op outside systemd.
        self.notifier = notifier or Notifier.from_environ()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop_event.set)
        loop.add_signal_handler(signal.SIGINT, self.stop_event.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_event.set)

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    async def run(self) -> None:
        if self._use_signals:
            self._install_signals()
        try:
            async with asyncio.TaskGroup() as tg:
                interval = self.notifier.watchdog_interval()
                watchdog = tg.create_task(self._watchdog(interval / 2),
                                          name="edged[supervisor].watchdog") if interval else None
                try:
                    failure = await self._serve(tg)
                finally:
                    for task in (watchdog, self._watch):
                        if task is not None:
                            task.cancel()
        finally:
            if self._use_signals:
                self._remove_signals()
        if failure is not None:
            # Raised out here: inside the task group it would come wrapped in an
            # ExceptionGroup, which callers (``edged run``) do not expect.
            raise failure

    async def _serve(self, tg: asyncio.TaskGroup) -> ComponentStartError | None:
        graph = self.graph
        graph_task = await self._start(tg, graph)
        self._ready(graph_task, f"running {self.config.path}")
        while True:
            stop_task = tg.create_task(self.stop_event.wait(), name="edged[supervisor].stop")
            reload_task = tg.create_task(self.reload_event.wait(),
                                         name="edged[supervisor].reload")
            await asyncio.wait([graph_task, stop_task, reload_task],
                               return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            reload_task.cancel()
            if graph_task.done():
                failure = graph_task.result()
                return failure  # start-up failed under a `fail` policy, or None
            if self.stop_event.is_set():
                self.notifier.stopping("stopping")
                await self._stop(graph, graph_task, "shutdown")
                return None
            self.reload_event.clear()
            self.notifier.reloading(f"reloading {self.config.path}")
            previous_config = self.config
            new_graph = await self._rebuild()
            if new_graph is None:
                # Refused: the running graph was never touched. READY=1 all the same, so
                # that systemd leaves the reloading state.
                self.notifier.ready(f"reload refused, {self.config.path} is invalid; "
                                    "previous config still running")
                continue
            await self._stop(graph, graph_task, "reload")
            new_graph.adopt_buffers(graph)
            self.graph = graph = new_graph
            graph_task = await self._start(tg, graph)
            if graph_task.done():
                # The new config validated but did not start: go back to the old one.
                log.error("reload_failed_to_start", error=repr(graph_task.result()))
                self.config = previous_config
                self.graph = graph = self.build(previous_config, self.registry, self.counters)
                graph.adopt_buffers(new_graph)  # which holds the old graph's histories
                graph_task = await self._start(tg, graph)
                self._ready(graph_task, "reload failed to start; previous config running")
                continue
            self.reloads += 1
            log.info("config_reloaded", path=str(self.config.path), reloads=self.reloads)
            self._ready(graph_task, f"running {self.config.path}, reloaded "
                        f"{self.reloads} time(s)")

    async def _start(self, tg: asyncio.TaskGroup, graph: Graph) -> asyncio.Task:
        """Start ``graph``; return once it is ready or has failed to start."""
        self.on_graph(graph)
        ready = asyncio.Event()
        graph_task = tg.create_task(self._guard(graph.run(ready.set)), name="edged[graph].run")
        ready_task = tg.create_task(ready.wait(), name="edged[graph].ready")
        await asyncio.wait([graph_task, ready_task], return_when=asyncio.FIRST_COMPLETED)
        ready_task.cancel()
        if ready.is_set():
            self._notify("edged_started", graph=graph, config=graph.config)
            self._watch_stores(tg, graph)
        return graph_task

    def _notify(self, hook: str, **kwargs) -> None:
        """Call every plugin's ``hook`` on its own: one that raises is logged and counted
        (``plugin_hook_failed{hook, plugin}``) and neither stops the daemon nor keeps the
        other plugins from hearing it."""
        impls = getattr(self.pm.hook, hook).get_hookimpls()
        for impl in impls:
            others = [other.plugin for other in impls if other is not impl]
            try:
                # Through pluggy, not impl.function: EDGED_TRACE_HOOKS still shows the call.
                self.pm.subset_hook_caller(hook, remove_plugins=others)(**kwargs)
            except Exception as exc:  # a plugin's bug, not the daemon's
                self.counters.inc("plugin_hook_failed", hook=hook, plugin=impl.plugin_name)
                log.exception("plugin_hook_failed", hook=hook, plugin=impl.plugin_name,
                              error=str(exc))

    def _watch_stores(self, tg: asyncio.TaskGroup, graph: Graph) -> None:
        """Follow the model stores of ``graph``'s pipelines while it runs."""
        config = graph.config
        watch = StoreWatch(config, graph.pipelines, lambda name: preprocessor_factory(
            self.registry, config, name, config.state_dir), self.counters)
        if watch.needed:
            self._watch = tg.create_task(watch.run(), name="edged[supervisor].model_stores")

    def _ready(self, graph_task: asyncio.Task, status: str) -> None:
        """READY=1 once every component has started (``_start`` returned with the graph
        still running); nothing if it failed to start, as the daemon then exits."""
        if not graph_task.done():
            self.notifier.ready(status)

    async def _watchdog(self, period_s: float) -> None:
        """Ping systemd's watchdog from the event loop, so that a blocked loop stops the
        pings and systemd restarts the daemon."""
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(period_s)

    @staticmethod
    async def _guard(run) -> Exception | None:
        """Keep a graph's start-up failure inside its task, so the supervisor can decide
        (fall back on reload, exit at start-up) instead of the task group aborting."""
        try:
            await run
        except ComponentStartError as exc:
            return exc
        return None

    async def _rebuild(self) -> Graph | None:
        """Read, validate and build the config file again, in a worker thread and within
        ``reload.timeout_s``; None (old config kept, refusal counted) if that fails. A
        stop requested meanwhile ends the wait: the refusal is then moot."""
        path, timeout = self.config.path, self.config.raw.reload.timeout_s
        if self._building is not None and not self._building.done():
            # A build past its time bound runs on (a thread cannot be stopped); the
            # bounds on the file end it. Never two at once.
            self._refuse("busy", [f"the previous reload of {path} is still being built"])
            return None
        self._building = work = asyncio.get_running_loop().run_in_executor(
            None, self._build, path)
        work.add_done_callback(_retrieve)
        stop = asyncio.create_task(self.stop_event.wait(), name="edged[supervisor].stop")
        try:
            await asyncio.wait([work, stop], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not work.done():
            if not self.stop_event.is_set():
                self._refuse("timeout", [f"reading, validating and building {path} took "
                                         f"over reload.timeout_s ({timeout:g} s)"])
            return None
        try:
            config, graph = work.result()
        except ConfigError as exc:
            self._refuse(getattr(exc, "reason", "invalid"), exc.problems)
            return None
        except Exception as exc:  # noqa: BLE001 - no file may take the daemon down
            self._refuse("error", [f"Cannot reload {path}: {type(exc).__name__}: {exc}"])
            return None
        if config.raw.plugins.block != self.config.raw.plugins.block:
            log.warning("plugin_changes_need_restart", block=config.raw.plugins.block)
        self.config = config
        return graph

    def _build(self, path: Path) -> tuple[EdgedConfig, Graph]:
        """Off the event loop: building a graph creates asyncio primitives (bound to a loop on
        first use, not at creation) and hashes models, and touches no running graph."""
        config = load_config(path, self.registry)
        return config, self.build(config, self.registry, self.counters)

    def _refuse(self, reason: str, problems: list[str]) -> None:
        self.counters.inc("reloads_refused", reason=reason)
        # One line per distinct refusal per 10 s: a SIGHUP loop cannot flood the journal,
        # and an operator who fixes one mistake sees the next at once.
        suppressed = self._refusals.allow(f"{reason}:{problems[:1]}")
        if suppressed is not None:
            log.error("reload_refused", path=str(self.config.path), reason=reason,
                      problems=problems, suppressed_since_last=suppressed)

    async def _stop(self, graph: Graph, task: asyncio.Task, reason: str) -> None:
        if self._watch is not None:  # first: no swap while the pipelines go away
            await cancel_all([self._watch])
            self._watch = None
        self._notify("edged_stopping", graph=graph, reason=reason)
        graph.stop(reason)
        await task


def _retrieve(work: asyncio.Future) -> None:
    """Take a build's outcome, so that one abandoned past its time bound is not logged
    as an exception never retrieved."""
    if not work.cancelled():
        work.exception()

