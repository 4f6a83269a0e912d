"""The node image: a Debian rootfs built offline-capable with mmdebstrap, cached by recipe hash.

One image serves both providers: nspawn boots the rootfs directory, libvirt boots an ext4
disk made from it (`disk_image`) with the kernel and initrd taken out of it. Everything the
roles install later is already in the image, so nodes never need a package mirror.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lab.config import Image
from lab.errors import LabError

SCRATCH = ".partial"
"""The suffix of a build's work paths (see `_scratch_prefix`)."""

RECIPE_VERSION = 4
"""Bump when the build steps below change in a way the recipe fields do not show."""

BASE_PACKAGES = (
    # boot, init, login
    "systemd",
    "systemd-sysv",
    "dbus",
    "udev",
    "linux-image-cloud-amd64",
    "openssh-server",
    "sudo",
    "cloud-init",
    "iproute2",
    "iputils-ping",
    "netbase",
    "ca-certificates",
    "procps",
    "less",
    "curl",
    "chrony",
    # what Ansible needs on a managed node
    "python3",
    "python3-apt",
    "python3-venv",
    # probes (collectors): tracepoint and kprobe tools, packet capture
    "bpftrace",
    "libbpf-tools",
    "bpfcc-tools",
    "python3-bpfcc",
    "tcpdump",
    "nftables",
    "ethtool",
    # the tools node's database
    "postgresql",
    # the LLM node's CPU server (xllamacpp links OpenMP)
    "libgomp1",
)

# Run inside the new root by mmdebstrap (`chroot "$1"`): cloud-init takes hostname, users,
# host keys and addresses from a NoCloud seed; the image ships no host keys of its own.
CUSTOMIZE = r"""
set -eu
cat > /etc/cloud/cloud.cfg.d/90-lab.cfg <<'EOF'
datasource_list: [NoCloud, None]
system_info:
  network:
    renderers: [networkd]
    activators: [networkd]
EOF
systemctl enable systemd-networkd.service
systemctl disable postgresql.service
systemctl mask systemd-networkd-wait-online.service apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer
rm -f /etc/ssh/ssh_host_*
printf 'PasswordAuthentication no\nKbdInteractiveAuthentication no\n' > /etc/ssh/sshd_config.d/50-lab.conf
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
echo 'tracefs /sys/kernel/tracing tracefs nofail 0 0' >> /etc/fstab
# On a cgroup v1 host a container's unit now and then fails to attach to its cgroup (219/CGROUP);
# when systemd-user-sessions is the one, /run/nologin stays and PAM refuses every login.
dropin=/etc/systemd/system/systemd-user-sessions.service.d
mkdir -p "$dropin"
printf '[Service]\nRestart=on-failure\nRestartSec=1\n' > "$dropin/50-lab-retry.conf"
"""


@dataclass(frozen=True)
class NodeImage:
    """A built image: the rootfs directory and the boot files inside it."""

    hash: str
    root: Path
    kernel: Path
    initrd: Path
    packages: tuple[str, ...]

    @property
    def directory(self) -> Path:
        return self.root.parent


def cache_dir() -> Path:
    return Path(os.environ.get("LAB_CACHE", Path.home() / ".cache" / "agentic-lab"))


def _sources(image: Image) -> str:
    if image.mirror:
        return f"deb {image.mirror} {image.suite} main"
    for candidate in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")):
        if candidate.is_file() and candidate.read_text().strip():
            return candidate.read_text()
    return f"deb http://deb.debian.org/debian {image.suite} main"


def recipe(image: Image) -> dict[str, object]:
    return {
        "version": RECIPE_VERSION,
        "suite": image.suite,
        "sources": _sources(image),
        "packages": sorted(set(BASE_PACKAGES) | set(image.extra_packages)),
        "customize": CUSTOMIZE,
    }


def recipe_hash(image: Image) -> str:
    return hashlib.sha256(json.dumps(recipe(image), sort_keys=True).encode()).hexdigest()[:16]


def _boot_files(root: Path) -> tuple[Path, Path]:
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    initrds = sorted((root / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise LabError(f"{root}/boot has no kernel or initrd; delete {root.parent} and run `lab image build` again")
    return kernels[-1], initrds[-1]


def load(image: Image) -> NodeImage | None:
    """The cached image for this recipe, or None when it has not been built."""
    directory = cache_dir() / "images" / recipe_hash(image)
    meta = directory / "image.json"
    if not meta.is_file():
        return None
    data = json.loads(meta.read_text())
    kernel, initrd = _boot_files(directory / "rootfs")
    return NodeImage(data["hash"], directory / "rootfs", kernel, initrd, tuple(data["recipe"]["packages"]))


def _require(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise LabError(f"`{tool}` is not installed; run `apt-get install {package}` (or the README's setup command)")


def build(image: Image, log=print) -> tuple[NodeImage, bool]:
    """Build the image unless the same recipe is cached. Returns the image and whether it was built."""
    cached = load(image)
    if cached is not None:
        return cached, False
    _require("mmdebstrap", "mmdebstrap")
    spec = recipe(image)
    digest = recipe_hash(image)
    images = cache_dir() / "images"
    images.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(images)
    work = Path(tempfile.mkdtemp(dir=images, prefix=_scratch_prefix(images / digest), suffix=SCRATCH))
    work.chmod(0o755)  # it becomes the image directory
    (work / "rootfs").mkdir()
    sources = work / "debian.sources"
    sources.write_text(str(spec["sources"]))
    if not str(spec["sources"]).lstrip().startswith("Types:"):
        sources = sources.rename(work / "debian.list")
    archives = cache_dir() / "apt-archives"
    archives.mkdir(parents=True, exist_ok=True)
    command = [
        "mmdebstrap",
        "--variant=apt",
        "--mode=root",
        "--format=directory",
        "--include=" + ",".join(spec["packages"]),  # type: ignore[arg-type]
        '--setup-hook=mkdir -p "$1"/var/cache/apt/archives',
        f"--setup-hook=sync-in {archives} /var/cache/apt/archives/",
        f"--customize-hook=sync-out /var/cache/apt/archives {archives}",
        '--customize-hook=chroot "$1" sh -c ' + _quote(CUSTOMIZE),
        '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb',
        str(spec["suite"]),
        str(work / "rootfs"),
        str(sources),
    ]
    log(f"building node image {digest} with mmdebstrap ({len(spec['packages'])} packages)")  # type: ignore[arg-type]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        (work / "build.log").write_text(result.stdout + result.stderr)
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        shutil.rmtree(work / "rootfs", ignore_errors=True)
        raise LabError(f"image build failed: {tail}; full log in {work / 'build.log'}")
    _boot_files(work / "rootfs")  # a rootfs without a kernel is never cached
    meta = {
        "hash": digest,
        "recipe": spec,
        "built_at": time.time(),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    (work / "image.json").write_text(json.dumps(meta, indent=2))
    _publish(work, images / digest)
    built = load(image)
    assert built is not None
    return built, True


def _scratch_prefix(final: Path) -> str:
    """Work paths of one build of `final`: beside it (one rename publishes it), unique (builds
    running at once never share one) and named after the building process, so that the work of a
    build that was killed can be told from one still running (`_remove_abandoned`)."""
    return f"{final.name}.{os.getpid()}."


def _remove_abandoned(directory: Path) -> None:
    """Work paths in `directory` whose building process is gone (or that predate `_scratch_prefix`)."""
    for scratch in directory.glob(f"*{SCRATCH}"):
        builder = _builder(scratch)
        if builder is not None and _alive(builder):
            continue
        if scratch.is_dir():
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            scratch.unlink(missing_ok=True)


def _builder(scratch: Path) -> int | None:
    """The process id in a work path's name, "<final>.<pid>.<random>.partial"."""
    parts = scratch.name.split(".")
    return int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


def _publish(work: Path, final: Path) -> None:
    """Put a finished build in place with one rename. A build of the same recipe that got there
    first wins and this one is dropped; a directory there without image.json is no image and goes."""
    if final.is_dir() and not (final / "image.json").is_file():
        shutil.rmtree(final)
    try:
        work.rename(final)
    except OSError as exc:
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        shutil.rmtree(work, ignore_errors=True)


def _quote(script: str) -> str:
    return "'" + script.replace("'", "'\\''") + "'"


def disk_image(node_image: NodeImage, size_gb: int = 8) -> Path:
    """The rootfs as an ext4 disk (label labroot) for VMs, made once per image with mkfs.ext4 -d."""
    disk = node_image.directory / "disk.raw"
    if disk.is_file():
        return disk
    _require("mkfs.ext4", "e2fsprogs")
    _remove_abandoned(node_image.directory)
    fd, name = tempfile.mkstemp(dir=node_image.directory, prefix=_scratch_prefix(disk), suffix=SCRATCH)
    partial = Path(name)
    with os.fdopen(fd, "wb") as handle:
        handle.truncate(size_gb * 1024**3)
    result = subprocess.run(
        ["mkfs.ext4", "-q", "-L", "labroot", "-d", str(node_image.root), str(partial)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise LabError(f"mkfs.ext4 could not make the VM disk from {node_image.root}: {result.stderr.strip()}")
    os.replace(partial, disk)  # one made at the same time from the same image is the same disk
    return disk
