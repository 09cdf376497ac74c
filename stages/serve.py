"""`lio serve`: a real Triton server on models/triton_cpu (not a DVC stage): raw images in, top-k labels out."""

import signal
import threading
from pathlib import Path

import click

from pipeline.core import paths
from pipeline.core.machine import cpu
from stages.command import one_line_errors


@click.command("serve")
@click.option(
    "--repository", default=str(paths.TRITON_CPU), show_default=True, type=click.Path(file_okay=False, exists=True)
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0: every interface).")
@click.option("--http-port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--grpc-port", default=8001, show_default=True, type=click.IntRange(0, 65535))
@click.option("--metrics-port", default=8002, show_default=True, type=click.IntRange(0, 65535))
@click.option("--exit-timeout", default=10, show_default=True, help="Seconds requests in flight get at shutdown.")
def command(repository, host, http_port, grpc_port, metrics_port, exit_timeout):
    """Serve the model repository on PyPI's bundled Triton server until Ctrl-C or SIGTERM.

    Model control is off (clients cannot load or unload models); a model whose worker dies is brought
    back by restarting the server. Files changed since `lio triton` wrote them are refused at start.
    """
    from pipeline.artifacts.runtime import RuntimeChoice
    from pipeline.serve.repository import read_repository
    from pipeline.serve.server import Ports, Server
    from pipeline.serve.supervise import supervise

    with one_line_errors():
        root = Path(repository)
        served = read_repository(root)
        served.verify(root)
        if paths.RUNTIME.exists():
            choice = RuntimeChoice.load(paths.RUNTIME)
            if not choice.made_on(*cpu()):
                click.secho(
                    f"warning: {served.candidate} was chosen on {choice.cpu}, this is {cpu()[0]}: "
                    "`dvc repro runtime` here chooses for this CPU",
                    fg="yellow",
                    err=True,
                )
        server = Server(root, Ports(host, http_port, grpc_port, metrics_port), exit_timeout)
        click.echo(f"starting tritonserver on {root} ({served.candidate}) ...")
        try:
            server.start()
            stop = threading.Event()
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
            p = server.ports
            click.echo(f"ready: HTTP {p.http_url}, gRPC {p.grpc_url}, metrics {p.host}:{p.metrics}/metrics")
            click.echo(f"models: {', '.join(served.models)} (send images to `lio`, max batch {served.max_batch})")
            supervise(server, stop, click.echo)
            click.echo("stopped")
        finally:
            server.close()
