"""`sevsim kds serve`: AMD KDS's URL scheme for sevsim's simulated chips."""

from __future__ import annotations

from typing import Annotated

import typer

from sevsim.cli.common import err, fail, until_stopped
from sevsim.errors import ConfigError, SevsimError

kds_app = typer.Typer(help="A key distribution server (AMD KDS's URLs) for simulated chips.",
                      no_args_is_help=True)


@kds_app.command("serve")
def serve(
    seed: Annotated[list[str], typer.Option(
        help="Seed of a simulated chip (as Host(seed=...) / --seed), repeatable.")],
    chip: Annotated[str, typer.Option(help="milan | genoa | turin")] = "milan",
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8080,
    rate_limit: Annotated[float | None, typer.Option(
        help="Requests per second before HTTP 429, like AMD's KDS.")] = None,
) -> None:
    """Serve VCEKs (/vcek/v1/{product}/{hwid}?blSPL=..), cert_chain and crl until Ctrl-C."""
    from sevsim.firmware.kds import KeyDistribution, make_server
    from sevsim.firmware.snp_pki import SnpPki
    from sevsim.hw.chips import GuestMode, chip_preset
    from sevsim.hw.engine import EncryptionEngine
    from sevsim.hw.memory import MemoryController

    command = "sevsim kds"
    try:
        preset = chip_preset(chip)
        if GuestMode.SNP not in preset.modes:
            raise ConfigError(f"chip {chip!r} has no SEV-SNP, hence no VCEK; serve milan, "
                              "genoa or turin")
        kds = KeyDistribution()
        memory = MemoryController(4096, EncryptionEngine(preset.tweak))
        platforms = [SnpPki(preset, memory, seed=s.encode()) for s in seed]
        kds.register(platforms)
        server = make_server(kds, host, port, rate_limit)
    except SevsimError as error:
        raise fail(error, command) from None
    except OSError as error:  # in use, not an address of this machine, no such host
        raise fail(ConfigError(f"cannot listen on {host}:{port}: {error.strerror}"),
                   command) from None
    address, bound = str(server.server_address[0]), server.server_address[1]
    err.print(f"sevsim kds: http://{address}:{bound}/vcek/v1/{preset.product}/ ...",
              highlight=False)
    for platform in platforms:
        hwid = platform.chip_id()[:platform.generation.hwid_size].hex()
        err.print(f"  chip {hwid}", highlight=False)
    try:
        with until_stopped():
            server.serve_forever()
    finally:
        server.server_close()
