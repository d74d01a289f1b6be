"""UNTRUSTED: the host-provided vTPM, one `swtpm socket --tpm2` process per VM, as QEMU runs it.

The TPM state lives in a per-VM directory; the data channel (raw TPM 2.0 command and response
bytes) and the control channel (swtpm's CMD_* protocol) are unix sockets in a private runtime
directory. The host owns this process and can read or rewrite its state at will: this is the
vTPM a hostile host can lie about, which the SNP-bound vTPM exists to fix.

Stopping is CMD_SHUTDOWN on the control channel (swtpm saves its state and exits), then
SIGTERM, then SIGKILL; the runtime directory and its sockets go with it, also when the owner
forgets `close()` (a finalizer) and when swtpm died on its own.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from sevsim.abi import tpm2
from sevsim.abi.tpm2 import RETRY_CODES, response_code
from sevsim.errors import TpmError, TpmFormatError, VtpmError

CMD_SHUTDOWN = 3  # swtpm control channel (swtpm_ioctls.h): save state and exit
START_TIMEOUT = 10.0
IO_TIMEOUT = 30.0  # key generation in a fresh swtpm takes well under this
STOP_TIMEOUT = 2.0
RETRIES = 10
STATE_FILE = "tpm2-00.permall"  # swtpm's TPM 2.0 state in its --tpmstate directory
_MAX_RESPONSE = 1 << 16


def _stop(proc: subprocess.Popen[bytes], ctrl_path: str, runtime: str) -> None:
    """Shut swtpm down the polite way, then less politely, and remove its sockets. A module
    function (not a method) so the finalizer holds no reference to the Vtpm."""
    if proc.poll() is None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(STOP_TIMEOUT)
                s.connect(ctrl_path)
                s.sendall(struct.pack(">I", CMD_SHUTDOWN))
                s.recv(4)
        except OSError:
            pass  # the control channel is gone or hung: signals below
        for escalate in (proc.terminate, proc.kill):
            try:
                proc.wait(STOP_TIMEOUT)
                break
            except subprocess.TimeoutExpired:
                escalate()
    proc.wait()  # reaps a process that had died on its own, too
    shutil.rmtree(runtime, ignore_errors=True)


class VtpmSocket:
    """A TPM 2.0 reached through a swtpm data socket (what tss2's swtpm TCTI connects to):
    `transmit` passes raw command bytes (what a guest's TPM driver sends); the other methods
    are the host's own client for the commands of sevsim.abi.tpm2. They raise TpmError for a
    refusal and VtpmError when the socket fails. Vtpm runs the swtpm behind one."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    @property
    def tcti(self) -> str:
        """The TCTI string with which tpm2-tools (libtss2-tcti-swtpm) reach this TPM."""
        return f"swtpm:path={self.socket_path}"

    def transmit(self, command: bytes) -> bytes:
        """Send one TPM command, return its whole response. A connection per command, as
        tss2's swtpm TCTI does, so tpm2-tools can use the same TPM between calls."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(IO_TIMEOUT)
                s.connect(self.socket_path)
                s.sendall(command)
                header = _recv_exact(s, 10)
                size = int.from_bytes(header[2:6], "big")
                if not 10 <= size <= _MAX_RESPONSE:
                    raise self._channel_failed(f"response header claims {size} bytes")
                return header + _recv_exact(s, size - 10)
        except (OSError, EOFError) as e:
            raise self._channel_failed(f"TPM channel failed: {e or type(e).__name__}") from e

    def _channel_failed(self, what: str) -> VtpmError:
        return VtpmError(f"{self.tcti}: {what}")

    def execute(self, command: bytes) -> bytes:
        """`transmit`, sent again while the TPM answers a retry warning, as a TSS does."""
        for attempt in range(RETRIES):
            response = self.transmit(command)
            if response_code(response) not in RETRY_CODES:
                break
            time.sleep(0.001 * attempt)
        return response

    def get_random(self, count: int) -> bytes:
        """Up to `count` bytes from the TPM's RNG."""
        return tpm2.parse_get_random_response(self.execute(tpm2.get_random_command(count)))

    def pcr_extend(self, pcr: int, digests: Mapping[int, bytes]) -> None:
        """Extend `pcr` in each bank given (hash algorithm -> digest)."""
        tpm2.parse_pcr_extend_response(self.execute(tpm2.pcr_extend_command(pcr, digests)))

    def pcr_read(self, selection: tpm2.PcrSelection) -> dict[int, dict[int, bytes]]:
        """Every PCR of `selection` (hash algorithm -> PCR -> value), in as many TPM2_PCR_Read
        calls as it takes: the TPM returns at most 8 digests a call."""
        wanted = {alg: set(pcrs) for alg, pcrs in selection.items()}
        values: dict[int, dict[int, bytes]] = {alg: {} for alg in selection}
        while any(wanted.values()):
            got = tpm2.parse_pcr_read_response(self.execute(tpm2.pcr_read_command(
                {alg: sorted(pcrs) for alg, pcrs in wanted.items() if pcrs})))
            if not any(got.selection.values()):
                raise TpmFormatError("pcrSelectionOut", "the TPM has no bank or PCR of "
                                     f"{sorted((a, sorted(p)) for a, p in wanted.items())}")
            for alg, read in got.values.items():
                values[alg].update(read)
                wanted[alg] -= set(read)
        return values

    def create_ak(self, hierarchy: int = tpm2.TPM_RH_ENDORSEMENT) -> tpm2.Primary:
        """An ECC P-256 attestation key, a primary object of `hierarchy`: the same seed and
        template give the same key after a restart of the same state."""
        return tpm2.parse_create_primary_response(
            self.execute(tpm2.create_primary_command(tpm2.ecc_ak_template(), hierarchy)))

    def quote(self, key: int, nonce: bytes,
              selection: tpm2.PcrSelection) -> tuple[bytes, bytes]:
        """(TPMS_ATTEST, TPMT_SIGNATURE) over `selection`, qualified by `nonce`."""
        return tpm2.parse_quote_response(
            self.execute(tpm2.quote_command(key, nonce, selection)))

    def shutdown(self, su: tpm2.Su = tpm2.Su.STATE) -> None:
        """TPM2_Shutdown: with STATE (the default) the state directory keeps PCRs 0-15 for a
        later Vtpm(state_dir, resume=True). The TPM accepts no command after it but Startup."""
        tpm2.parse_shutdown_response(self.execute(tpm2.shutdown_command(su)))

    def flush(self, handle: int) -> None:
        """Unload a transient object (an AK) from the TPM."""
        tpm2.parse_flush_context_response(self.execute(tpm2.flush_context_command(handle)))


class Vtpm(VtpmSocket):
    """One running swtpm (TPM 2.0) for one VM, and the VtpmSocket client to it; use as a
    context manager.

    `state_dir` keeps the TPM's NV state across restarts (created if missing); without it the
    state is temporary and deleted with the sockets. swtpm starts the TPM with
    TPM2_Startup(CLEAR), which resets every PCR; `resume=True` sends TPM2_Startup(STATE)
    instead, which gives back PCRs 0-15 as the last TPM2_Shutdown(STATE) (`shutdown()`) saved
    them, as a machine resuming from suspend (PCR 16 and 23 reset, as the PC Client profile
    says). A state without such a shutdown is a VtpmError: there is nothing to resume. With
    `startup=False` the TPM waits for a TPM2_Startup, as a machine's firmware sends it.
    """

    def __init__(self, state_dir: str | os.PathLike[str] | None = None,
                 swtpm: str = "swtpm", *, startup: bool = True, resume: bool = False) -> None:
        program = shutil.which(swtpm)
        if program is None:
            raise VtpmError(f"{swtpm}: not found on PATH (Debian: apt-get install swtpm)")
        self.program = program
        if resume and (state_dir is None or not Path(state_dir, STATE_FILE).exists()):
            raise VtpmError(f"{program}: no state to resume in {state_dir} (no TPM state there)")
        if state_dir is not None:
            try:
                Path(state_dir).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise VtpmError(f"{program}: cannot make its state directory: {e}") from e
        self.runtime = Path(tempfile.mkdtemp(prefix="sevsim-vtpm-"))  # short: sun_path limit
        self.state_dir = Path(state_dir) if state_dir is not None else self.runtime / "state"
        self.state_dir.mkdir(exist_ok=True)
        super().__init__(str(self.runtime / "tpm.sock"))
        self.ctrl_path = self.socket_path + ".ctrl"  # where tss2's swtpm TCTI looks for it
        self.log_path = self.runtime / "swtpm.log"
        with open(self.log_path, "wb") as log:
            try:
                self.proc = subprocess.Popen(
                    [program, "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir}",
                     "--server", f"type=unixio,path={self.socket_path}",
                     "--ctrl", f"type=unixio,path={self.ctrl_path}",
                     "--flags", "not-need-init,startup-clear" if startup and not resume
                     else "not-need-init"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            except OSError as e:
                shutil.rmtree(self.runtime, ignore_errors=True)
                raise VtpmError(f"{program}: cannot start: {e}") from e
        self._finalizer = weakref.finalize(self, _stop, self.proc, self.ctrl_path,
                                           str(self.runtime))
        try:
            self._wait_ready()
            if resume:
                self._resume()
        except BaseException:
            self._finalizer()
            raise

    def _resume(self) -> None:
        try:
            tpm2.parse_startup_response(self.execute(tpm2.startup_command(tpm2.Su.STATE)))
        except TpmError as e:
            raise VtpmError(f"{self.program}: no state to resume in {self.state_dir} (it was "
                            f"not shut down with TPM2_Shutdown(STATE)): {e}") from None

    @property
    def pid(self) -> int:
        """The swtpm process id."""
        return self.proc.pid

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise VtpmError(f"{self.program}: exited with status {self.proc.returncode} "
                                f"at start: {self._log_tail()}")
            if os.path.exists(self.socket_path) and os.path.exists(self.ctrl_path):
                return
            time.sleep(0.005)
        raise VtpmError(f"{self.program}: no sockets after {START_TIMEOUT} s: "
                        f"{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            text = ""
        return text[-500:] or "no output"

    @property
    def stopped(self) -> bool:
        """Whether `close()` has run (swtpm stopped, sockets removed)."""
        return not self._finalizer.alive

    def died(self) -> VtpmError | None:
        """A VtpmError saying how swtpm ended if it ended on its own (killed, crashed)."""
        if self.stopped or self.proc.poll() is None:
            return None
        return self._dead("it is no longer running")

    def _dead(self, what: str) -> VtpmError:
        code = self.proc.poll()
        if code is None:
            return VtpmError(f"{self.program} (pid {self.pid}): {what}")
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return VtpmError(f"{self.program} (pid {self.pid}) {how}: {what}")

    def transmit(self, command: bytes) -> bytes:
        """As VtpmSocket.transmit, naming this swtpm process and how it ended on a failure."""
        if not self._finalizer.alive:
            raise VtpmError(f"{self.program}: vTPM already stopped")
        return super().transmit(command)

    def _channel_failed(self, what: str) -> VtpmError:
        return self._dead(what)

    def close(self) -> None:
        """Stop swtpm (state saved) and remove its sockets; safe to call twice."""
        self._finalizer()

    def __enter__(self) -> Vtpm:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return out
