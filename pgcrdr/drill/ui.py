"""How a drill shows its progress: a rich progress bar per step, driven by what the API reports
(the running operation's steps, the nodes' progress updates while a service is built)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from pgcrdr.drill.report import Phase

MARK = {"done": "[green]done[/green]", "failed": "[red]failed[/red]", "interrupted": "[yellow]interrupted[/yellow]"}


class RichUi:
    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.fields[now]}"), console=console, transient=False)
        self.task: TaskID | None = None
        self.name = ""

    def __enter__(self) -> RichUi:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    def start(self, name: str) -> None:
        self.name = name
        self.task = self.progress.add_task(name, total=None, now="")

    def update(self, completed: float, total: float | None, description: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=int(completed), total=int(total) if total else None,
                                 now=description[:70])

    def finish(self, phase: Phase) -> None:
        if self.task is None:
            return
        total = next(t.total for t in self.progress.tasks if t.id == self.task) or 1
        self.progress.update(self.task, completed=total if phase.state == "done" else 0, total=total,
                             description=f"{phase.name}: {MARK[phase.state]}", now=(phase.detail or "")[:70])
        self.progress.stop_task(self.task)
        self.task = None

    def say(self, line: str) -> None:
        self.progress.console.print(line)
