"""The command line: `python -m lab ...` and the console script `lab ...` are this program."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from lab import inventory, lifecycle, runlayout, state
from lab.config import LabConfig, load_config
from lab.errors import LabError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Agentic traffic lab: its nodes (three, and fanout's workers), probes on every node, experiments, analysis.",
)
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
def main_options(
    ctx: typer.Context, config: Path = typer.Option(Path("lab.yaml"), "--config", "-c", help="The lab description.")
) -> None:
    ctx.obj = Context(config)


def _progress(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")


@app.command()
def up(
    ctx: typer.Context, provider: str | None = typer.Option(None, help="auto, libvirt or nspawn (overrides lab.yaml)")
) -> None:
    """Bring the lab up (idempotent): nodes booted, SSH-ready, inventory and known_hosts written."""
    lab = ctx.obj.lab
    started = time.monotonic()
    current = lifecycle.up(lab, provider, _progress)
    console.print(
        f"lab [bold]{lab.name}[/bold] is up in {time.monotonic() - started:.1f} s "
        f"with {current.provider} ({current.accelerator})"
    )
    _node_table(lifecycle.status(lab))
    console.print(f"inventory: {inventory.inventory_file(lab)}   next: [bold]ansible-playbook deploy.yml[/bold]")


@app.command()
def status(
    ctx: typer.Context,
    token: bool = typer.Option(False, "--token", help="Print only the lab's API token (for your own clients)."),
) -> None:
    """A table of the nodes: provider, accelerator, address, state, services; where the API token is."""
    lab = ctx.obj.lab
    if token:
        print(inventory.api_token(lab))  # plain, for $(lab status --token)
        return
    if state.load(lab) is None:
        console.print("the lab is not up (run `lab up`)")
    _node_table(lifecycle.status(lab))
    if inventory.api_token_file(lab).is_file():
        console.print(
            f"API token: {inventory.api_token_file(lab)} (0600). Clients of the LLM, MCP, agent and baseline "
            "endpoints send [bold]Authorization: Bearer $(lab status --token)[/bold]"
        )


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
        raise LabError(f"no deploy.yml in {root}; keep lab.yaml in the repository root, beside deploy.yml")
    state.require(lab)
    beside = Path(sys.executable).with_name("ansible-playbook")  # the venv's, when `lab` runs from it unactivated
    playbook = str(beside) if beside.is_file() else "ansible-playbook"
    raise typer.Exit(subprocess.call([playbook, "deploy.yml", *ctx.args], cwd=root))


@app.command()
def experiment(
    ctx: typer.Context,
    scenario: str = typer.Argument(
        ..., help="baseline, simple, multihop, fanout, all (what the lab can run), or a scenario .yaml"
    ),
    tasks: int | None = typer.Option(None, help="measured tasks per repetition (overrides the scenario file)"),
    warmup: int | None = typer.Option(None, help="warm-up tasks (overrides the scenario file)"),
) -> None:
    """Run a scenario end to end: probes on every node, the workload driven, logs pulled, analysis."""
    from experiments.controller import run_named
    from experiments.progress import Reporter

    # A shell starts a background job (`cmd &` in a script) with SIGINT ignored, and Python keeps an
    # ignored SIGINT: such a run went on through all its tasks after a Ctrl-C. A run always stops.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        run_dirs = run_named(ctx.obj.lab, scenario, Reporter(console), tasks, warmup)
    except KeyboardInterrupt:
        errors.print(
            "[red]interrupted[/red]: probes stopped, what they measured is pulled (see the run's manifest faults)"
        )
        sys.exit(130)
    _report(run_dirs, table=True, comparison=len(run_dirs) > 1)


@app.command()
def sweep(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="a sweep .yaml: base scenario, grid, repetitions, seed"),
    fresh: bool = typer.Option(False, help="start a new sweep directory beside the last one instead of resuming it"),
) -> None:
    """Run a grid of scenarios with repetitions in a seeded random order; resumable; one sweep report."""
    from experiments.progress import Reporter, SweepReporter
    from experiments.sweep import SweepInterrupted, run_sweep

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as `lab experiment`: a background job's Ctrl-C stops it
    try:
        done = run_sweep(ctx.obj.lab, file, Reporter(console), SweepReporter(console), fresh)
    except SweepInterrupted as exc:
        errors.print(f"[red]interrupted[/red]: the current run's data is safe; {exc}", highlight=False, soft_wrap=True)
        sys.exit(130)
    missing = [run.name for run in done.runs if run.status != "complete"]
    if missing:
        console.print(
            f"[yellow]{len(missing)} run(s) did not complete[/yellow] ({', '.join(missing)}; see their manifests' "
            f"faults): run `lab sweep {file}` again to run them again"
        )
    console.print(f"sweep report: {done.report}")


@app.command()
def analyze(
    ctx: typer.Context, runs: list[Path] = typer.Argument(..., help="run directories"), compare: bool = False
) -> None:
    """Tables, plots and report.html for one or more run directories (--compare: one report across them)."""
    missing = [str(r) for r in runs if not runlayout.manifest_path(r).is_file() and not runlayout.nodes_dir(r).is_dir()]
    if missing:
        raise LabError(f"not a run directory (no manifest.json, no nodes/): {', '.join(missing)}")
    _report(runs, table=not compare, comparison=compare)


def _report(runs: list[Path], table: bool, comparison: bool) -> None:
    """Analyse each run once; print a line per run and/or the comparison report's path."""
    import analysis

    results = [analysis.analyze_run(run) for run in runs]
    if table:
        rows = Table("run", "scenario", "tasks", "flows/task", "RTT p99 (µs)", "matched", "problems", "report")
        for result in results:
            s = result.summary
            rows.add_row(
                result.run.run_id,
                result.run.scenario,
                f"{s['tasks']:.0f}",
                f"{s['flows_per_task']:.2f}",
                f"{s['rtt_us_p99']:.0f}",
                f"{s['matched_lab_flows']:.1%}",
                str(len(result.run.problems)),
                str(runlayout.report_path(result.run.path)),
            )
        console.print(rows)
    if comparison:
        console.print(f"comparison report: {analysis.compare_results(results)}")


@app.command()
def export(
    ctx: typer.Context,
    inputs: list[Path] = typer.Argument(..., help="run directories or sweep directories (holding sweep.json)"),
    out: Path = typer.Argument(..., help="the dataset directory to write (new or empty)"),
    force: bool = typer.Option(False, "--force", help="replace DIR even when it is not empty"),
    reanalyse: bool = typer.Option(False, "--reanalyse", help="analyse every run again, even with fresh tables"),
) -> None:
    """One dataset of runs: tables as parquet with a run_id column, manifests, DATASHEET.md and SHA256SUMS."""
    from analysis.export import export as write_dataset

    lab_dir = ctx.obj.config_path.resolve().parent  # a sweep's run_dir entries are relative to it
    sheet = write_dataset(inputs, out, lab_dir, force=force, reanalyse=reanalyse, log=_progress)
    rows = Table("table", "rows", "columns")
    for name, table in sheet["tables"].items():
        rows.add_row(name, str(table["rows"]), str(len(table["columns"])))
    console.print(rows)
    console.print(f"dataset: {out}   datasheet: {out / 'DATASHEET.md'}   verify: cd {out} && sha256sum -c SHA256SUMS")


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
        code = app(prog_name="lab", standalone_mode=False)  # returns the exit code a command asked for
        sys.exit(code if isinstance(code, int) else 0)
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
