"""The controller's NTP server on the lab network: a chronyd of the lab's own, bound to the host's
lab address only, serving the host's clock to the nodes, whose chrony lists it first
(roles/common/templates/chrony.conf.j2). Without it VMs on the isolated network keep whatever
offset they booted with (-776 ms was seen under TCG). It never sets the host's clock (`-x`) and
leaves any chronyd of the host alone: its own config, pid file and no command port.

Containers share the host's clock, so only the libvirt provider starts it.
"""

from __future__ import annotations

import shutil
import socket
import struct
import time
from pathlib import Path

from lab.config import LabConfig
from lab.errors import LabError
from vms import host

CHRONYD = "chronyd"
NTP_PORT = 123


def directory(lab: LabConfig) -> Path:
    return lab.state_dir / "timeserver"


def config_text(lab: LabConfig) -> str:
    state = directory(lab)
    return (
        f"# lab {lab.name}: the host's clock for the lab network only (vms/timeserver.py)\n"
        f"bindaddress {lab.network.host_address}\nport {NTP_PORT}\ncmdport 0\n"
        f"allow {lab.network.subnet}\nlocal stratum 8\n"
        f"pidfile {state / 'chronyd.pid'}\n"
    )


def running(lab: LabConfig) -> list[int]:
    return host.processes_with(str(directory(lab) / "chrony.conf"))


def start(lab: LabConfig) -> bool:
    """Start the lab's chronyd unless it runs; True when started now. It must answer within seconds."""
    if running(lab):
        return False
    chronyd = shutil.which(CHRONYD, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if chronyd is None:
        raise LabError(
            "chronyd is not installed on this host; the lab's VMs take their time from it: "
            "apt-get install chrony (setup.sh does)"
        )
    state = directory(lab)
    state.mkdir(parents=True, exist_ok=True)
    conf = state / "chrony.conf"
    conf.write_text(config_text(lab))
    # -x: never touch the host's clock; -u root: the pid file lives in the lab's state directory
    host.run(chronyd, "-x", "-u", "root", "-f", str(conf))
    deadline = time.monotonic() + 10
    while True:
        try:
            query(str(lab.network.host_address))
            return True
        except OSError as exc:
            if time.monotonic() > deadline:
                stop(lab)
                raise LabError(
                    f"the lab's chronyd does not answer NTP on {lab.network.host_address}:{NTP_PORT} ({exc}); "
                    f"is port {NTP_PORT} held by another NTP server on that address?"
                ) from exc
            time.sleep(0.2)


def stop(lab: LabConfig) -> bool:
    """Stop the lab's chronyd and remove its directory; True when it ran."""
    pids = running(lab)
    for pid in pids:
        host.stop_process(pid, grace=5)
    shutil.rmtree(directory(lab), ignore_errors=True)
    return bool(pids)


def query(address: str, timeout_s: float = 1.0) -> tuple[int, float]:
    """(stratum, offset of the server's clock from ours in seconds) of one SNTP client request."""
    request = b"\x23" + 47 * b"\0"  # LI 0, version 4, mode 3 (client)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout_s)
        sent = time.time()
        sock.sendto(request, (address, NTP_PORT))
        reply, _ = sock.recvfrom(512)
        received = time.time()
    if len(reply) < 48:
        raise OSError(f"a short NTP reply ({len(reply)} B)")
    stratum = reply[1]
    seconds, fraction = struct.unpack("!II", reply[40:48])  # transmit timestamp
    server = seconds - 2_208_988_800 + fraction / 2**32
    return stratum, server - (sent + received) / 2
