"""The command line: `python -m lab ...` and the console script `lab ...` are this program."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from lab import inventory, lifecycle, state
from lab.config import LabConfig, load_config
from lab.errors import LabError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Agentic traffic lab: three nodes, probes on every node, experiments, analysis.")
image_app = typer.Typer(no_args_is_help=True, help="The node image.")
app.add_typer(image_app, name="image")
console = Console()
errors = Console(stderr=True)
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


class Context:
    def __init__(self, config: Path):
        self.config_path = config
        self._lab: LabConfig | None = None

    @property
    def lab(self) -> LabConfig:
        if self._lab is None:
            self._lab = load_config(self.config_path)
        return self._lab


@app.callback()
def main_options(ctx: typer.Context, config: Path = typer.Option(Path("lab.yaml"), "--config", "-c", help="The lab description.")) -> None:
    ctx.obj = Context(config)


def _progress(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")


@app.command()
def up(ctx: typer.Context, provider: Optional[str] = typer.Option(None, help="auto, libvirt or nspawn (overrides lab.yaml)")) -> None:
    """Bring the lab up (idempotent): nodes booted, SSH-ready, inventory and known_hosts written."""
    lab = ctx.obj.lab
    started = time.monotonic()
    current = lifecycle.up(lab, provider, _progress)
    console.print(f"lab [bold]{lab.name}[/bold] is up in {time.monotonic() - started:.1f} s with {current.provider} ({current.accelerator})")
    _node_table(lifecycle.status(lab))
    console.print(f"inventory: {inventory.inventory_file(lab)}   next: [bold]ansible-playbook deploy.yml[/bold]")


@app.command()
def status(ctx: typer.Context) -> None:
    """A table of the nodes: provider, accelerator, address, state, services."""
    lab = ctx.obj.lab
    if state.load(lab) is None:
        console.print("the lab is not up (run `lab up`)")
    _node_table(lifecycle.status(lab))


def _node_table(reports: list[lifecycle.NodeReport]) -> None:
    table = Table("node", "provider", "accelerator", "address", "state", "services")
    for r in reports:
        colour = "green" if r.state == "running" else "yellow"
        table.add_row(r.name, r.provider, r.accelerator, r.address, f"[{colour}]{r.state}[/{colour}]", r.services)
    console.print(table)


@app.command(context_settings=PASS_THROUGH)
def ssh(ctx: typer.Context, node: str = typer.Argument(..., help="agent-a, agent-b or llm")) -> None:
    """A shell on NODE, or `lab ssh NODE -- CMD ...` to run one command and return its exit code."""
    from lab.ssh import ssh_argv

    lab = ctx.obj.lab
    target = state.require(lab).node(node)
    command = [a for a in ctx.args if a != "--"]
    argv = ssh_argv(target, inventory.known_hosts_file(lab), command or None)
    os.execvp(argv[0], argv)


@app.command(context_settings=PASS_THROUGH)
def deploy(ctx: typer.Context) -> None:
    """Configure every node: runs `ansible-playbook deploy.yml` with any extra arguments."""
    lab = ctx.obj.lab
    root = lab.path.parent.resolve()
    if not (root / "deploy.yml").is_file():
        raise LabError("deploy.yml is not implemented yet (issue 4)")
    state.require(lab)
    raise typer.Exit(subprocess.call(["ansible-playbook", "deploy.yml", *ctx.args], cwd=root))


@app.command()
def experiment(ctx: typer.Context, scenario: str = typer.Argument(..., help="baseline, simple, multihop or all")) -> None:
    """Run a scenario end to end: probes on every node, the workload driven, logs pulled, analysis."""
    raise LabError("`lab experiment` is not implemented yet (issue 6)")


@app.command()
def analyze(ctx: typer.Context, runs: list[Path] = typer.Argument(..., help="run directories"), compare: bool = False) -> None:
    """Tables, plots and report.html for one or more run directories."""
    raise LabError("`lab analyze` is not implemented yet (issue 7)")


@app.command()
def teardown(ctx: typer.Context) -> None:
    """Remove every node, network, mount, process and file the lab made; says what it removed."""
    lab = ctx.obj.lab
    removed = lifecycle.teardown(lab, _progress)
    if not removed.items:
        console.print("nothing to remove: the lab is down")
        return
    console.print(f"removed {len(removed.items)} item(s):")
    for item in removed.items:
        console.print(f"  - {item}")


@image_app.command("build")
def image_build(ctx: typer.Context) -> None:
    """Build the node image (Debian bookworm, mmdebstrap); a rebuild of the same recipe is a no-op."""
    from vms import image

    lab = ctx.obj.lab
    started = time.monotonic()
    with console.status("building the node image (about a minute on first build)"):
        node_image, built = image.build(lab.image, log=_progress)
    verb = "built" if built else "already built (same recipe)"
    console.print(f"node image {node_image.hash} {verb} in {time.monotonic() - started:.1f} s: {node_image.root}")


def main() -> None:
    try:
        app(prog_name="lab", standalone_mode=False)
    except LabError as exc:
        errors.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        errors.print("[red]interrupted[/red]")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors carry their own exit code and message
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
