"""`make container-check`: build containers/ccfv.def the way `apptainer build --sandbox` builds a
debootstrap definition, without Apptainer, then run the workflow's `score` rule inside the result.

The build follows Apptainer 1.x for ``Bootstrap: debootstrap`` (read in apptainer/apptainer:
internal/pkg/build/sources/conveyorPacker_debootstrap.go, internal/pkg/build/stage.go, and the writers of
/.singularity.d in internal/pkg/build/assemblers):

1. ``debootstrap --variant=minbase --exclude=openssl,udev,debconf-i18n,e2fsprogs --include=apt,<Include>
   --arch=<host> <OSVersion> <root> <MirrorURL>``
2. ``%files`` copied from the host, source paths relative to the repository root (where docs/cluster.md
   runs ``apptainer build``);
3. ``%post`` run in the root as ``/bin/sh -ex /.post.script`` with a clean environment (``%environment``
   is not applied at build time) and the host's /etc/resolv.conf and /etc/hosts bound in, so pip
   downloads from PyPI as in an Apptainer build: none of this host's pip index, find-links, constraint
   or wheel folders are seen. The one thing passed in is the CA bundle the host's pip trusts, when it
   names one (host_ca_bundle: this project's machines reach PyPI through a TLS-intercepting proxy);
4. ``%environment`` written to /.singularity.d/env/90-environment.sh, ``%test`` to /.singularity.d/test
   (``#!/bin/sh``, no ``-e``), ``%labels`` to /.singularity.d/labels.json;
5. ``%test`` run with every /.singularity.d/env/*.sh sourced and the host's environment passed, as
   ``apptainer test`` does.

Then, beyond a build: the versions installed in the root against requirements.lock and against .venv, the
image's ccfv against the working tree's, and the ``score`` rule run by Snakemake inside the root (cwd and
HOME a bound work folder, as a ``--sdm apptainer`` job has them) on a features file written by the test
suite's helpers, compared with the same rule run with .venv.

The stamp (build/container/stamp.json) holds the hashes of the definition and of every ``%files`` source.
The root is built from scratch when the definition or the lock changed; when only the package's sources
changed (ccfv/, pyproject.toml, README.md), %files is copied again and the same %post rerun in the root
(refresh: nothing downloaded); otherwise it is reused as it is. The Debian base from step 1 is kept apart
and reused while the header is unchanged. Everything lives under build/container/ (git-ignored).

Mounts: every chroot (and debootstrap itself) runs inside a private mount and PID namespace (``unshare``),
so /proc, /sys, /dev and the bind mounts exist only while that process lives and vanish with it however it
ends; nothing is mounted in the host's namespace. A tree is deleted only after /proc/self/mountinfo shows
nothing mounted under it.

Needs root, debootstrap, unshare and chroot (util-linux, coreutils; as root on Debian, missing ones are installed
with apt-get first, as the tests install slurm-wlm; otherwise the error gives the exact command), network access
to the Debian mirror and PyPI, and .venv (``make .venv``), whose Python runs this script.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFINITION = ROOT / "containers" / "ccfv.def"
BUILD = ROOT / "build" / "container"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

# The sections Apptainer knows; the builder runs the ones in SUPPORTED and refuses the others, which run
# on the host (%setup, %pre) or need a multi-stage build (%files from a stage).
SECTIONS = {"setup", "pre", "files", "post", "environment", "test", "labels", "runscript", "startscript", "help",
            "arguments", "apprun", "appinstall", "appenv", "apptest", "applabels", "appfiles", "apphelp"}
SUPPORTED = {"files", "post", "environment", "test", "labels", "runscript", "help"}
# Python 3 of each Debian release that a definition might bootstrap (the lock is frozen for one minor).
DEBIAN_PYTHON = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}
# Apptainer's PATH inside a container when the host's is not passed in.
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What `apptainer build` gives %post: --cleanenv plus the variables naming the build-time env and labels files.
POST_ENV = {"PATH": CONTAINER_PATH, "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
            "APPTAINER_ENVIRONMENT": "/.singularity.d/env/91-environment.sh",
            "SINGULARITY_ENVIRONMENT": "/.singularity.d/env/91-environment.sh",
            "APPTAINER_LABELS": "/.build.labels", "SINGULARITY_LABELS": "/.build.labels"}
# Host variables that `apptainer exec/test` does not carry into a container.
NOT_PASSED = ("PATH", "LD_LIBRARY_PATH", "PYTHONHOME", "VIRTUAL_ENV")
LOCK = "requirements.lock"
# Not in the lock on purpose: the venv's own tools and the package itself.
NOT_PINNED = {"pip", "setuptools", "wheel", "ccfv"}
# Files copied for the score rule run: the workflow, not the package (the image brings its own).
WORKFLOW = ("Snakefile", "rules", "config", "scripts", "envs")
SCORE_TARGET, SCORE_MODEL = "Task91_SynthLiver", "unet-Task92_SynthLung"
IGNORED_PARTS = ("__pycache__",)
IGNORED_SUFFIXES = (".pyc", ".egg-info")

# Where %post finds the host's CA bundle: in the /dev tmpfs, so that it never lands in the image.
HOST_CA = "/dev/ccfv-host-ca.pem"

# Runs on the host inside the private namespaces made by unshare, then becomes the chroot. $1: the root,
# $2: a host folder to bind at /mnt ("" for none), $3: a CA bundle to copy to HOST_CA ("" for none), the
# rest: the command inside. The mounts are those a sandbox build gives %post: proc, a read-only sysfs, a
# minimal /dev on tmpfs, the host's name resolution.
ENTER = r"""
set -eu
root=$1; work=$2; ca=$3; shift 3
mount -t proc proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
mount -t tmpfs -o mode=0755,nosuid,size=65536k ccfv-dev "$root/dev"
mknod -m 666 "$root/dev/null" c 1 3
mknod -m 666 "$root/dev/zero" c 1 5
mknod -m 666 "$root/dev/full" c 1 7
mknod -m 666 "$root/dev/random" c 1 8
mknod -m 666 "$root/dev/urandom" c 1 9
mknod -m 666 "$root/dev/tty" c 5 0
mkdir -m 1777 "$root/dev/shm"
mkdir -m 0755 "$root/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev ccfv-shm "$root/dev/shm"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
for f in resolv.conf hosts; do
    mount --bind /etc/$f "$root/etc/$f"
    mount -o remount,bind,ro "$root/etc/$f"
done
if [ -n "$work" ]; then mount --bind "$work" "$root/mnt"; fi
if [ -n "$ca" ]; then cp "$ca" "$root/dev/ccfv-host-ca.pem"; fi
cd /
exec chroot "$root" "$@"
"""


class ContainerCheckError(Exception):
    """A failure of the check, with a message meant for the person who ran it."""


# --------------------------------------------------------------------------------------------------
# the definition file
# --------------------------------------------------------------------------------------------------


@dataclass
class Definition:
    """An Apptainer definition file, as far as this builder needs it.

    ``header``: the ``Key: value`` lines before the first section, keys lower-cased (Apptainer reads them
    case-insensitively). ``sections``: each ``%section``'s text as written (scripts keep their comments and
    indentation), ``args``: what follows a section's name on its line (``%post -c /bin/bash``).
    """

    path: Path
    header: dict[str, str]
    sections: dict[str, str]
    args: dict[str, str] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)  # section -> line number of its %name line

    @property
    def files(self) -> list[tuple[str, str]]:
        """(host source, destination in the image) of each %files line; '#' starts a comment, a missing
        destination is the source path, as in Apptainer. Raises ValueError for a malformed line."""
        pairs = []
        start = self.lines.get("files", 0)
        for offset, raw in enumerate(self.sections.get("files", "").splitlines(), start=1):
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) > 2:
                raise ValueError(f"{self.path}:{start + offset}: %files line {raw.strip()!r}: expected "
                                 f"'source [destination]', got {len(words)} words (paths with spaces are not "
                                 f"supported)")
            source, dest = words[0], words[-1]
            if not dest.startswith("/"):
                dest = "/" + dest  # Apptainer places a relative destination under the image's root
            if ".." in Path(dest).parts:
                raise ValueError(f"{self.path}:{start + offset}: %files destination {dest!r} leaves the image")
            pairs.append((source, dest))
        return pairs

    @property
    def labels(self) -> dict[str, str]:
        labels = {}
        for raw in self.sections.get("labels", "").splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                key, _, value = line.partition(" ")
                labels[key] = value.strip()
        return labels


def parse_definition(text: str, path: Path | str = "<definition>") -> Definition:
    """Parse an Apptainer definition file: header (``Key: value`` lines, ``#`` comments), then sections
    starting at lines ``%name [args]``.

    Raises ValueError naming the file and line for a header line without a colon, an unknown section, or a
    section given twice.
    """
    path = Path(path)
    header: dict[str, str] = {}
    sections: dict[str, list[str]] = {}
    args: dict[str, str] = {}
    lines: dict[str, int] = {}
    current = None
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("%") and len(stripped) > 1 and not stripped[1].isspace():
            name, _, rest = stripped[1:].partition(" ")
            if name not in SECTIONS:
                raise ValueError(f"{path}:{number}: unknown section %{name}")
            if name in sections:
                raise ValueError(f"{path}:{number}: section %{name} given twice (first at line {lines[name]})")
            sections[name], args[name], lines[name], current = [], rest.split("#", 1)[0].strip(), number, name
        elif current is None:
            if not stripped or stripped.startswith("#"):
                continue
            key, colon, value = stripped.partition(":")
            if not colon or not key.strip() or " " in key.strip():
                raise ValueError(f"{path}:{number}: header line {stripped!r} is not 'Key: value'")
            header[key.strip().lower()] = value.strip()
        else:
            sections[current].append(raw)
    return Definition(path, header, {k: "\n".join(v).strip("\n") for k, v in sections.items()}, args, lines)


#: ``{{ NAME }}`` in a definition: an Apptainer build argument (``apptainer build --build-arg NAME=value``).
_BUILD_ARG = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def host_debian_mirror(sources: Path = Path("/etc/apt/sources.list.d/debian.sources"),
                       sources_list: Path = Path("/etc/apt/sources.list")) -> str | None:
    """The Debian mirror this machine's apt uses: the first ``URIs:`` of a deb822 ``debian.sources`` file, else
    the URL of the first ``deb`` line of ``sources.list``; None when neither names one."""
    if sources.is_file():
        for line in sources.read_text().splitlines():
            if line.strip().lower().startswith("uris:"):
                uris = line.split(":", 1)[1].split()
                if uris:
                    return uris[0]
    if sources_list.is_file():
        for line in sources_list.read_text().splitlines():
            fields = [f for f in line.split("#", 1)[0].split() if not f.startswith("[")]
            if len(fields) >= 2 and fields[0] == "deb":
                return fields[1]
    return None


def apply_build_args(defn: Definition, build_args: dict[str, str]) -> Definition:
    """The definition with every ``{{ NAME }}`` of its header replaced as ``apptainer build --build-arg
    NAME=value`` replaces it. Raises ContainerCheckError naming the file and the argument when one is not
    given."""
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name not in build_args:
            raise ContainerCheckError(f"{defn.path}: the definition needs the build argument {name} "
                                      f"(apptainer build --build-arg {name}=...; container-check: --build-arg)")
        return build_args[name]

    header = {key: _BUILD_ARG.sub(value, text) for key, text in defn.header.items()}
    return dataclasses.replace(defn, header=header)


def check_buildable(defn: Definition) -> None:
    """What this builder (like `apptainer build` for this bootstrap agent) needs from a definition.
    Raises ContainerCheckError naming the file and the problem."""
    where = defn.path
    if defn.header.get("bootstrap", "").lower() != "debootstrap":
        raise ContainerCheckError(f"{where}: Bootstrap is {defn.header.get('bootstrap')!r}; container-check builds "
                                  f"only 'debootstrap' definitions (Debian's mirror is all it may reach)")
    for key, name in (("mirrorurl", "MirrorURL"), ("osversion", "OSVersion")):
        if not defn.header.get(key):
            raise ContainerCheckError(f"{where}: the debootstrap header needs {name}")
    unsupported = sorted(set(defn.sections) - SUPPORTED)
    if unsupported:
        raise ContainerCheckError(f"{where}: container-check does not run section(s) "
                                  f"{', '.join('%' + s for s in unsupported)}")
    for name in ("files", "post", "test"):
        if defn.args.get(name):
            raise ContainerCheckError(f"{where}:{defn.lines[name]}: %{name} {defn.args[name]}: section arguments are "
                                      f"not supported by container-check")
    try:
        files = defn.files
    except ValueError as err:
        raise ContainerCheckError(str(err)) from None
    for source, _ in files:
        if not (ROOT / source).exists():
            raise ContainerCheckError(f"{where}: %files copies {source}, which does not exist in {ROOT}")


# --------------------------------------------------------------------------------------------------
# hashes and the stamp
# --------------------------------------------------------------------------------------------------


def _ignored(rel: Path) -> bool:
    return any(p in IGNORED_PARTS or p.endswith(IGNORED_SUFFIXES) for p in rel.parts)


def content_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names, executable bits and contents, in name
    order; __pycache__, *.pyc and *.egg-info left out: Python writes them by running the code)."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if _ignored(rel) or p.is_dir():
            continue
        if p.is_symlink():
            h.update(f"{rel.as_posix()}\0link\0{os.readlink(p)}\0".encode())
        else:
            with open(p, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            h.update(f"{rel.as_posix()}\0{os.access(p, os.X_OK)}\0{digest}\0".encode())
    return h.hexdigest()


def build_inputs(defn: Definition) -> dict:
    """What the root is built from: the definition's hash and each %files source's (the lock is one)."""
    return {"definition": content_digest(defn.path),
            "files": {source: content_digest(ROOT / source) for source, _ in defn.files}}


def rebuild_reasons(stamp: dict | None, inputs: dict) -> list[str]:
    """Why the root must be built from scratch: none built yet, or the definition or the lock changed.
    Empty when the built root can be kept."""
    if stamp is None:
        return ["no root built yet"]
    reasons = []
    if stamp.get("definition") != inputs["definition"]:
        reasons.append("the definition changed")
    if stamp.get("files", {}).get(LOCK) != inputs["files"].get(LOCK):
        reasons.append(f"{LOCK} changed")
    return reasons


def stale_sources(stamp: dict, inputs: dict) -> list[str]:
    """The %files sources other than the lock (the package: its code, pyproject.toml, README.md) that
    changed since the root was built or last refreshed."""
    old = stamp.get("files", {})
    return [source for source, digest in inputs["files"].items() if source != LOCK and old.get(source) != digest]


def header_key(defn: Definition) -> str:
    fields = {k: defn.header.get(k, "") for k in ("bootstrap", "mirrorurl", "osversion", "include")}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# mounts, deletion, chroot
# --------------------------------------------------------------------------------------------------


def mounts_under(path: Path, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below ``path`` in this process's mount namespace (/proc/self/mountinfo,
    whose fifth field is the mount point, with spaces and the like written as octal escapes)."""
    if mountinfo is None:
        mountinfo = Path("/proc/self/mountinfo").read_text()
    prefix = str(path).rstrip("/")
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return found


def remove_tree(path: Path) -> None:
    """Delete a build tree, refusing while anything is mounted under it (a live bind mount would make
    the deletion reach into the host's files)."""
    if not path.exists() and not path.is_symlink():
        return
    live = mounts_under(path)
    if live:
        raise ContainerCheckError(f"refusing to delete {path}: still mounted below it: {', '.join(live)}; "
                                  f"unmount them (umount -l) and run again")
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path)


def _real_file_in_root(root: Path, inner: str, kind: str) -> None:
    """Make root/inner a plain file or folder (never a symlink: a mount onto a symlink lands wherever it
    points, i.e. on the host), as a mount point for ENTER."""
    target = root / inner.lstrip("/")
    if target.is_symlink():
        target.unlink()
    if kind == "dir":
        target.mkdir(parents=True, exist_ok=True)
    elif not target.exists():
        target.touch()


def run_logged(argv: list[str], log: Path, env: dict | None = None, cwd: Path | None = None,
               echo: bool = True) -> tuple[int, str]:
    """Run a command, its output going to ``log`` (and to the terminal with ``echo``); returns (exit
    status, output)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = []
    with open(log, "w") as f:
        f.write(f"$ {shlex.join(argv)}\n")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                text=True, errors="replace", bufsize=1)
        try:
            for line in proc.stdout:
                out.append(line)
                f.write(line)
                if echo:
                    sys.stdout.write(line)
                    sys.stdout.flush()
            proc.wait()
        except BaseException:
            proc.kill()  # unshare --kill-child takes the chroot's processes with it
            proc.wait()
            raise
    return proc.returncode, "".join(out)


def in_root(root: Path, argv: list[str], log: Path, env: dict, work: Path | None = None,
            echo: bool = True, ca: Path | None = None) -> tuple[int, str]:
    """Run ``argv`` chrooted into ``root`` in private mount and PID namespaces, with proc, sys, a minimal
    /dev, the host's resolv.conf and hosts (read-only), ``work`` at /mnt and ``ca`` at HOST_CA. Nothing
    stays mounted after."""
    for inner, kind in (("proc", "dir"), ("sys", "dir"), ("dev", "dir"), ("mnt", "dir"),
                        ("etc/resolv.conf", "file"), ("etc/hosts", "file")):
        _real_file_in_root(root, inner, kind)
    cmd = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
           "/bin/sh", "-c", ENTER, "ccfv-enter", str(root), str(work or ""), str(ca or ""), *argv]
    try:
        return run_logged(cmd, log, env=env, echo=echo)
    finally:
        live = mounts_under(root)
        if live:  # cannot happen with a private namespace; say so loudly rather than carry on
            raise ContainerCheckError(f"mounts left under {root} after a chroot: {live}")


def run_environment(home: str = "/root") -> dict[str, str]:
    """The environment of %test and of jobs, as `apptainer test/exec` gives it (no --cleanenv): the host's
    variables but Apptainer's own and NOT_PASSED, with the container's default PATH; %environment is sourced
    on top inside (with_environment). Host settings such as OPENBLAS_CORETYPE thus reach the image as they
    reach .venv, so both runs of the score rule use the same BLAS kernels."""
    env = {k: v for k, v in os.environ.items()
           if k not in NOT_PASSED and not k.startswith(("APPTAINER", "SINGULARITY"))}
    return {**env, "PATH": CONTAINER_PATH, "HOME": home}


def with_environment(argv: list[str]) -> list[str]:
    """``argv`` run after sourcing /.singularity.d/env/*.sh in order, as Apptainer's action scripts do."""
    return ["/bin/sh", "-c", 'for f in /.singularity.d/env/*.sh; do [ -f "$f" ] && . "$f"; done; exec "$@"',
            "ccfv-env", *argv]


# --------------------------------------------------------------------------------------------------
# the build
# --------------------------------------------------------------------------------------------------


def host_arch() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], check=True, capture_output=True, text=True).stdout.strip()


def bootstrap(defn: Definition, logs: Path) -> tuple[Path, bool]:
    """The Debian base (step 1), reused while the header is unchanged. Returns (folder, reused)."""
    base, meta = BUILD / "base", BUILD / "base.json"
    key = header_key(defn)
    if base.is_dir() and meta.is_file() and json.loads(meta.read_text()).get("key") == key:
        return base, True
    remove_tree(base)
    meta.unlink(missing_ok=True)
    partial = BUILD / "base.partial"
    remove_tree(partial)
    include = " ".join(filter(None, [defn.header.get("include", ""), os.environ.get("INCLUDE", "")]))
    include = ",".join(["apt", *include.replace(",", " ").split()])
    argv = ["unshare", "--mount", "--propagation", "private", "debootstrap", "--variant=minbase",
            "--exclude=openssl,udev,debconf-i18n,e2fsprogs", f"--include={include}", f"--arch={host_arch()}",
            defn.header["osversion"], str(partial), defn.header["mirrorurl"]]
    rc, output = run_logged(argv, logs / "debootstrap.log", echo=False)
    if rc:
        tail = "\n    ".join(output.strip().splitlines()[-15:])
        raise ContainerCheckError(f"debootstrap of {defn.header['osversion']} from {defn.header['mirrorurl']} failed "
                                  f"(exit {rc}); last lines of {logs / 'debootstrap.log'}:\n    {tail}")
    if mounts_under(partial):
        raise ContainerCheckError(f"debootstrap left mounts under {partial}: {mounts_under(partial)}")
    partial.rename(base)
    meta.write_text(json.dumps({"key": key, "header": defn.header}, indent=2))
    return base, False


def copy_files(defn: Definition, root: Path, replace: bool = False) -> None:
    """%files: each host source (relative to the repository root) to its destination in the root, a
    folder with its contents. The destination must be new (Apptainer would copy into an existing folder;
    a full destination path says the same without depending on the base image); with ``replace``, the
    copy of an earlier build is deleted first."""
    for source, dest in defn.files:
        src = ROOT / source
        target = root / dest.lstrip("/")
        for parent in [target, *target.parents]:
            if parent == root:
                break
            if parent.is_symlink():
                raise ContainerCheckError(f"{defn.path}: %files destination {dest} passes through the symlink "
                                          f"/{parent.relative_to(root)} in the image; give the real path")
        if target.exists():
            if not replace:
                raise ContainerCheckError(f"{defn.path}: %files destination {dest} already exists in the Debian "
                                          f"base; give the full path of the copy")
            remove_tree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, symlinks=True,
                            ignore=shutil.ignore_patterns(*IGNORED_PARTS, *(f"*{s}" for s in IGNORED_SUFFIXES)))
        else:
            shutil.copy2(src, target)


def write_metadata(defn: Definition, root: Path) -> None:
    """/.singularity.d as Apptainer leaves it after %post: env script, test, runscript, labels, definition."""
    meta = root / ".singularity.d"
    (meta / "env").mkdir(parents=True, exist_ok=True)
    scripts = {meta / "env" / "90-environment.sh": defn.sections.get("environment", ""),
               meta / "test": defn.sections.get("test"), meta / "runscript": defn.sections.get("runscript", "")}
    for path, body in scripts.items():
        if body is not None:
            path.write_text("#!/bin/sh\n\n" + body + "\n")
            path.chmod(0o755)
    if "help" in defn.sections:
        (meta / "runscript.help").write_text(defn.sections["help"] + "\n")
    (meta / "labels.json").write_text(json.dumps(defn.labels, indent=1))
    (meta / "Singularity").write_text(defn.path.read_text())


# pip's words for a requirement it could not install (pip 23)
_NOT_FOUND = re.compile(r"Could not find a version that satisfies the requirement (\S+)(.*)$", re.M)
_FROM_VERSIONS = re.compile(r"\(from versions: ([^)]*)\)")
_OTHER_PYTHON = re.compile(r"Ignored the following versions that require a different python version: (.*)$", re.M)
_NO_BUILD = re.compile(r"(?:Failed building wheel for|Failed to build|Could not build wheels for) (\S+?)[,\s]")
_NETWORK = re.compile(r"(CERTIFICATE_VERIFY_FAILED|SSLError|Temporary failure in name resolution|Network is "
                      r"unreachable|Connection (?:refused|reset|timed out)|ReadTimeoutError|NewConnectionError|"
                      r"Could not fetch URL)")


def _lock_lines(path: Path) -> dict[str, tuple[int, str]]:
    """Canonical package name -> (line number, pin) of a requirements file."""
    found = {}
    if path.is_file():
        for number, raw in enumerate(path.read_text().splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if line:
                found[_canonical(re.split(r"[=<>!~;\[ ]", line, maxsplit=1)[0])] = (number, line)
    return found


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def explain_post_failure(defn: Definition, returncode: int, log_text: str, log_path: Path) -> str:
    """The message for a failed %post: the command that failed (the last line ``sh -x`` traced), each
    pinned package pip could not install with its line in the host's lock file, or a network problem;
    else the log's last lines."""
    traced = [line[2:] for line in log_text.splitlines() if line.startswith("+ ")]
    command = traced[-1] if traced else "(no command was traced)"
    requirement_files = re.findall(r"(?:-r|--requirement)[ =](\S+)", command)
    in_image = {dest: source for source, dest in defn.files}
    pins: dict[str, tuple[str, int, str]] = {}
    for inner in requirement_files:
        source = in_image.get(inner)
        for name, (number, pin) in _lock_lines(ROOT / source if source else Path("/nonexistent")).items():
            pins[name] = (source, number, pin)
    problems = []
    other_python = _OTHER_PYTHON.search(log_text)
    for match in _NOT_FOUND.finditer(log_text):
        requirement, rest = match.group(1), match.group(2)
        listed = _FROM_VERSIONS.search(rest)
        versions = [] if listed is None or listed.group(1).strip() == "none" else listed.group(1).split(", ")
        name, _, wanted = requirement.partition("==")
        name = _canonical(re.split(r"[<>!~;\[]", name, maxsplit=1)[0])
        where = f"{pins[name][0]}:{pins[name][1]}: " if name in pins else ""
        if not versions:
            have = "pip found no release of it for the image's Python and platform"
        else:
            shown = ", ".join(versions[-5:])
            have = f"pip found {len(versions)} other release(s) for the image's Python and platform, the last: {shown}"
        hint = next((f"; pip ignored a {wanted} that requires another Python ({item.strip()}), so the image's "
                     f"Debian release may be the wrong one" for item in (other_python.group(1).split(";")
                                                                        if other_python and wanted else [])
                     if item.strip().startswith(f"{wanted} ")), "")
        problems.append(f"{where}{requirement} cannot be installed in the image ({have}{hint})")
    for match in _NO_BUILD.finditer(log_text):
        name = _canonical(match.group(1))
        where = f"{pins[name][0]}:{pins[name][1]}: {pins[name][2]}" if name in pins else match.group(1)
        line = f"{where}: no wheel for the image, and building it from source failed"
        if line not in problems:
            problems.append(line)
    lines = [f"%post of {defn.path.relative_to(ROOT) if defn.path.is_relative_to(ROOT) else defn.path} failed "
             f"(exit {returncode}) in the command", f"    {command}"]
    network = _NETWORK.search(log_text)
    if network:  # pip then also reports "no version" for what it could not fetch: the network is the cause
        lines.append(f"  pip could not reach the package index from inside the image ({network.group(1)}): the "
                     f"build needs the Debian mirror and PyPI, and a proxy's CA in PIP_CERT or pip's `cert` "
                     f"setting where TLS is intercepted")
    elif problems:
        lines.append("  pinned package(s) that cannot be installed in the image:")
        lines += [f"    {p}" for p in dict.fromkeys(problems)]
        lines.append("  Change the pin (or the image's Debian release, whose Python must be the lock's) and run "
                     "again.")
    else:
        lines.append("  last lines of its output:")
        lines += [f"    {line}" for line in log_text.strip().splitlines()[-15:]]
    lines.append(f"  full log: {log_path}")
    return "\n".join(lines)


def host_ca_bundle() -> Path | None:
    """The CA bundle this host's pip trusts when it names one (PIP_CERT, else ``cert`` in pip's
    configuration files).

    Some networks reach PyPI through a TLS-intercepting proxy whose CA only the host's bundle holds (this
    project's machines do); pip in the image, with its own certifi bundle, would then refuse PyPI. Only the
    trust goes in, as PIP_CERT for %post: none of the host's index, find-links or constraint settings.
    """
    value = os.environ.get("PIP_CERT", "")
    if not value and VENV_PYTHON.exists():
        found = subprocess.run([str(VENV_PYTHON), "-m", "pip", "config", "get", "global.cert"], capture_output=True,
                               text=True)
        value = found.stdout.strip() if found.returncode == 0 else ""
    return Path(value) if value and Path(value).is_file() else None


def run_test(root: Path, logs: Path) -> str:
    """%test as `apptainer test` runs it. Returns its output; raises ContainerCheckError if it fails."""
    if not (root / ".singularity.d" / "test").is_file():
        raise ContainerCheckError("the definition has no %test; container-check needs one")
    rc, output = in_root(root, with_environment(["/.singularity.d/test"]), logs / "test.log", run_environment())
    if rc:
        tail = "\n    ".join(output.strip().splitlines()[-15:])
        raise ContainerCheckError(f"%test failed in the built root (exit {rc}):\n    {tail}\n  full log: "
                                  f"{logs / 'test.log'}")
    return output


def run_post(defn: Definition, root: Path, logs: Path) -> None:
    """%post as `apptainer build` runs it (``/bin/sh -ex``, clean environment). Raises ContainerCheckError
    with explain_post_failure's message when it fails."""
    (root / ".singularity.d" / "env").mkdir(parents=True, exist_ok=True)
    script = root / ".post.script"
    script.write_text(defn.sections.get("post", "") + "\n")
    script.chmod(0o755)
    ca = host_ca_bundle()
    env = {**POST_ENV, "PIP_CERT": HOST_CA} if ca else POST_ENV
    print(f"container-check: running %post in the root (pip downloads from PyPI"
          f"{f'; trusting the host CA bundle {ca}' if ca else ''})", flush=True)
    try:
        rc, output = in_root(root, ["/bin/sh", "-ex", "/.post.script"], logs / "post.log", env, ca=ca)
    finally:
        script.unlink()
    if rc:
        raise ContainerCheckError(explain_post_failure(defn, rc, output, logs / "post.log"))


def refresh(defn: Definition, root: Path, logs: Path) -> float:
    """The package's sources changed, the definition and the lock did not: copy %files again and run the
    same %post in the built root; pip finds every pin installed (nothing is downloaded) and reinstalls the
    package from its new sources. Sound for a %post that can run twice (ccfv.def's: a venv over the same
    venv, pip installs, apt-get clean); a change to %post changes the definition and rebuilds from
    scratch. Returns the seconds it took."""
    t0 = time.monotonic()
    copy_files(defn, root, replace=True)
    run_post(defn, root, logs)
    write_metadata(defn, root)
    return time.monotonic() - t0


def build(defn: Definition, inputs: dict, logs: Path, stop_after: str | None) -> dict:
    """Steps 1 to 5 into build/container/root.partial, renamed to root and stamped when all passed.
    Returns the timings."""
    times = {}
    t0 = time.monotonic()
    base, reused = bootstrap(defn, logs)
    times["debootstrap"] = 0.0 if reused else time.monotonic() - t0
    print(f"container-check: Debian base {'reused' if reused else 'bootstrapped'} ({base})", flush=True)
    if stop_after == "bootstrap":
        return times
    partial = BUILD / "root.partial"
    t0 = time.monotonic()
    remove_tree(partial)
    subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(partial)], check=True)
    copy_files(defn, partial)
    times["copy"] = time.monotonic() - t0
    t0 = time.monotonic()
    try:
        run_post(defn, partial, logs)
    except ContainerCheckError as err:
        raise ContainerCheckError(f"{err}\n  the half-built root stays in {partial} (the next run deletes it)")
    times["post"] = time.monotonic() - t0
    if stop_after == "post":
        return times
    write_metadata(defn, partial)
    t0 = time.monotonic()
    run_test(partial, logs)
    times["test"] = time.monotonic() - t0
    root = BUILD / "root"
    t0 = time.monotonic()
    (BUILD / "stamp.json").unlink(missing_ok=True)  # it describes the earlier root, kept until now
    remove_tree(root)
    times["delete old root"] = time.monotonic() - t0
    partial.rename(root)
    return times


def disk_usage(path: Path) -> int:
    """Bytes the tree occupies on disk (du -s -x, hard links once)."""
    out = subprocess.run(["du", "-s", "-x", "--block-size=1", str(path)], check=True, capture_output=True,
                         text=True).stdout
    return int(out.split()[0])


# --------------------------------------------------------------------------------------------------
# after the build: versions and the score rule
# --------------------------------------------------------------------------------------------------

_VERSIONS = ("import importlib.metadata as m, json; "
             "print('CCFV-VERSIONS', json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))")
_PACKAGE = "import ccfv, os; print('CCFV-PACKAGE', os.path.dirname(os.path.realpath(ccfv.__file__)))"


def python_digest(folder: Path) -> str:
    """sha256 over a package folder's .py files (relative names and contents): what a wheel installs of
    ccfv/, whatever else lies beside it in the source tree."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.py")):
        rel = p.relative_to(folder)
        if not _ignored(rel):
            h.update(f"{rel.as_posix()}\0".encode() + p.read_bytes() + b"\0")
    return h.hexdigest()


def _parse_versions(output: str, where: str) -> dict[str, str]:
    for line in output.splitlines():
        if line.startswith("CCFV-VERSIONS "):
            return {_canonical(k): v for k, v in json.loads(line.split(" ", 1)[1]).items()}
    raise ContainerCheckError(f"could not list the installed packages {where}:\n{output[-2000:]}")


def compare_versions(image: dict[str, str], venv: dict[str, str], lock: dict[str, str]) -> list[str]:
    """Problems: a pin of the lock missing or at another version in the image; a package in the image
    that the lock does not pin and .venv has at another version. Empty when the image matches."""
    problems = [f"{name}: lock {version}, image {image.get(name, 'not installed')}"
                for name, version in lock.items() if image.get(name) != version]
    for name in sorted((set(image) | set(venv)) - set(lock) - NOT_PINNED):
        if image.get(name) != venv.get(name):
            problems.append(f"{name} (not in the lock): image {image.get(name, 'not installed')}, "
                            f".venv {venv.get(name, 'not installed')}")
    return problems


def check_versions(root: Path, logs: Path, lock_path: Path) -> list[str]:
    """The installed distributions of the root and of .venv against the lock. Returns notes about
    packages outside the lock; raises ContainerCheckError on a difference."""
    rc, output = in_root(root, with_environment(["python", "-c", f"{_VERSIONS}; {_PACKAGE}"]),
                         logs / "versions.log", run_environment(), echo=False)
    if rc:
        raise ContainerCheckError(f"listing the image's packages failed (exit {rc}); see {logs / 'versions.log'}")
    image = _parse_versions(output, "in the image")
    package = next(line.split(" ", 1)[1] for line in output.splitlines() if line.startswith("CCFV-PACKAGE "))
    if python_digest(root / package.lstrip("/")) != python_digest(ROOT / "ccfv"):
        raise ContainerCheckError(f"the image's ccfv ({package}) is not the working tree's ccfv/: run with --rebuild")
    venv_run = subprocess.run([str(VENV_PYTHON), "-c", _VERSIONS], capture_output=True, text=True)
    venv = _parse_versions(venv_run.stdout, "in .venv")
    lock = {name: pin.partition("==")[2].split(";")[0].strip() for name, (_, pin) in _lock_lines(lock_path).items()}
    problems = compare_versions(image, venv, lock)
    if problems:
        raise ContainerCheckError("the image's packages differ from the lock or from .venv:\n    "
                                  + "\n    ".join(problems))
    return [f"{name}: image {image.get(name, '-')}, .venv {venv.get(name, '-')} (not in the lock)"
            for name in sorted(NOT_PINNED - {"ccfv"}) if image.get(name) != venv.get(name)]


def make_features(path: Path) -> Path:
    """A features file written by the test suite's helpers (tests/scores/test_scoring.py: four cases whose
    class-k features sit around k, two decoder layers, source-model probabilities)."""
    import importlib.util

    import numpy as np

    from ccfv.features.file import write_features

    spec = importlib.util.spec_from_file_location("ccfv_test_scoring", ROOT / "tests" / "scores" / "test_scoring.py")
    helpers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helpers)
    rng = np.random.default_rng(0)
    records = [helpers._record("c0", rng), helpers._record("c1", rng, present=(1,)), helpers._record("c2", rng),
               helpers._record("c3", rng)]
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_features(path, helpers._meta(), records)


def _workflow_copy(dest: Path, features: Path) -> str:
    """A copy of the workflow with the features file in place; returns the score rule's output path."""
    remove_tree(dest)
    dest.mkdir(parents=True)
    for name in WORKFLOW:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    placed = dest / "results" / "features" / SCORE_TARGET / f"{SCORE_MODEL}.h5"
    placed.parent.mkdir(parents=True)
    shutil.copy2(features, placed)
    return f"results/scores/{SCORE_TARGET}/{SCORE_MODEL}.json"


def run_score_rule(root: Path, logs: Path) -> dict:
    """The score rule, run by Snakemake inside the root and with .venv, on the same features file.
    Returns the scores; raises ContainerCheckError when either run fails or the outputs differ."""
    rules = BUILD / "rule"
    features = make_features(rules / "features.h5")
    outputs = {}
    for side in ("image", "venv"):
        work = rules / side
        target = _workflow_copy(work, features)
        args = ["-m", "snakemake", "--cores", "1", target, "--allowed-rules", "score"]
        if side == "image":
            # as a --sdm apptainer job: the working directory bound in, and HOME there (apptainer --home)
            env = run_environment(home="/mnt")
            rc, output = in_root(root, with_environment(["/bin/sh", "-c", 'cd /mnt && exec python "$@"', "sh",
                                                         *args]), logs / "rule-image.log", env, work=work,
                                 echo=False)
        else:
            rc, output = run_logged([str(VENV_PYTHON), *args], logs / "rule-venv.log", cwd=work, echo=False)
        if rc or not (work / target).is_file():
            tail = "\n    ".join(output.strip().splitlines()[-20:])
            raise ContainerCheckError(f"the score rule failed {'inside the image' if side == 'image' else 'with .venv'}"
                                      f" (exit {rc}):\n    {tail}\n  full log: {logs / f'rule-{side}.log'}")
        outputs[side] = json.loads((work / target).read_text())
    if outputs["image"] != outputs["venv"]:
        diff = {k: (outputs["image"]["scores"].get(k), v) for k, v in outputs["venv"]["scores"].items()
                if outputs["image"]["scores"].get(k) != v}
        raise ContainerCheckError(f"the score rule's output inside the image differs from .venv's "
                                  f"({rules / 'image'}, {rules / 'venv'}); scores (image, .venv) that differ: {diff}. "
                                  f"Both runs get this process's environment (OpenBLAS picks its kernels from the "
                                  f"CPU and OPENBLAS_CORETYPE: a different kernel changes the last digits)")
    return outputs["image"]["scores"]


# --------------------------------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------------------------------


#: The host programs the build runs, with the Debian package of each.
HOST_TOOLS = (("debootstrap", "debootstrap"), ("unshare", "util-linux"), ("chroot", "coreutils"), ("dpkg", "dpkg"))


def install_command(packages: list[str]) -> str:
    return f"apt-get update && apt-get install -y --no-install-recommends {' '.join(packages)}"


def _apt_get(*args: str, timeout: float = 600) -> tuple[int, str]:
    """Run ``apt-get ARGS`` non-interactively; (exit status, its output)."""
    try:
        done = subprocess.run(["apt-get", *args], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, f"apt-get {' '.join(args)} did not finish in {timeout:.0f} s"
    return done.returncode, done.stdout + done.stderr


def ensure_host_tools(which=shutil.which, is_root: bool | None = None, apt_get=_apt_get, log=print) -> list[str]:
    """Install the missing :data:`HOST_TOOLS` with apt-get, as the test suite installs slurm-wlm
    (tests/slurm/local_slurm.py): as root on a Debian-like machine, ``apt-get install`` first, and when a tool is
    still missing (a fresh machine's empty or stale package list) ``apt-get update`` and the install again.
    Returns the packages installed (empty when nothing was missing).

    Raises ContainerCheckError with the exact command to run when a tool is missing and cannot be installed
    here: not root (the check needs root anyway), no apt-get, or apt-get failing (with the end of its output).
    ``which``, ``is_root`` and ``apt_get(*args) -> (status, output)`` are injectable for the tests."""
    is_root = os.geteuid() == 0 if is_root is None else is_root

    def missing() -> list[tuple[str, str]]:
        return [(tool, package) for tool, package in HOST_TOOLS if which(tool) is None]

    absent = missing()
    if not absent:
        return []
    packages = sorted({package for _, package in absent})
    what = ", ".join(tool for tool, _ in absent)
    if not is_root:
        raise ContainerCheckError(f"needs root, and {what} is not installed: as root, run "
                                  f"`{install_command(packages)}`, then `make container-check` as root")
    if which("apt-get") is None:
        raise ContainerCheckError(f"{what} is not installed and this machine has no apt-get: install the "
                                  f"package(s) {', '.join(packages)} with your distribution's package manager")
    log(f"container-check: {what} missing: apt-get install {' '.join(packages)}")
    status, output = apt_get("install", "-y", "-q", "--no-install-recommends", *packages)
    if missing():  # an empty or stale package list (a fresh machine): update once, then install again
        log("container-check: apt-get update, then install again")
        status, output = apt_get("update", "-q")
        if status == 0:
            status, output = apt_get("install", "-y", "-q", "--no-install-recommends", *packages)
    still = missing()
    if still:
        tail = "\n    ".join(output.strip().splitlines()[-5:])
        raise ContainerCheckError(f"apt-get could not install {' '.join(packages)} (exit {status}; still missing: "
                                  f"{', '.join(t for t, _ in still)}); run `{install_command(packages)}` and read its "
                                  f"output. Last lines:\n    {tail}")
    return packages


def preflight(need_venv: bool = True) -> None:
    """Root, the host tools (installed with apt-get when missing: :func:`ensure_host_tools`) and ``.venv``."""
    ensure_host_tools()
    if os.geteuid() != 0:
        raise ContainerCheckError("needs root: debootstrap, chroot and mounts (like `apptainer build` of a "
                                  "debootstrap definition)")
    if need_venv and not VENV_PYTHON.exists():
        raise ContainerCheckError(f"{VENV_PYTHON} is missing: run `make .venv` (the rule is compared with it)")


def check(definition: Path, stop_after: str | None = None, rebuild: bool = False,
          build_args: dict[str, str] | None = None) -> dict:
    """Build, refresh or reuse the root, then run %test, compare versions and run the score rule. Returns
    the summary that is also written to build/container/check.json."""
    started = time.monotonic()
    load_before = os.getloadavg()
    defn = parse_definition(definition.read_text(), definition)
    defn = apply_build_args(defn, build_args or {})
    check_buildable(defn)
    preflight(need_venv=stop_after is None)
    BUILD.mkdir(parents=True, exist_ok=True)
    logs = BUILD / "logs"
    logs.mkdir(exist_ok=True)
    root, stamp_path = BUILD / "root", BUILD / "stamp.json"
    inputs = build_inputs(defn)
    stamp = json.loads(stamp_path.read_text()) if stamp_path.is_file() and root.is_dir() else None
    reasons = ["--rebuild"] if rebuild else rebuild_reasons(stamp, inputs)
    summary = {"definition": str(definition)}
    if reasons:
        print(f"container-check: building the root ({', '.join(reasons)})", flush=True)
        # the stamp stays with the old root, which is replaced only once the new one passed %test
        t0 = time.monotonic()
        times = build(defn, inputs, logs, stop_after)
        if stop_after:
            print(f"container-check: stopped after {stop_after} ({time.monotonic() - t0:.0f} s)")
            return {"stopped_after": stop_after, "seconds": times}
        stamp = {**inputs, "built": time.strftime("%Y-%m-%d %H:%M:%S"), "build_seconds": time.monotonic() - t0,
                 "stage_seconds": times, "root_bytes": disk_usage(root),
                 "load_average": {"before": load_before, "after": os.getloadavg()}}
        stamp_path.write_text(json.dumps(stamp, indent=2))
        summary["root"] = "built"
    else:
        if stop_after:
            return {"stopped_after": stop_after, "reused": True}
        stale = stale_sources(stamp, inputs)
        print(f"container-check: reusing {root} (built {stamp['built']} in {stamp['build_seconds']:.0f} s; the "
              f"definition and {LOCK} are unchanged)", flush=True)
        if stale:
            print(f"container-check: {', '.join(stale)} changed: copying %files again and rerunning %post in the "
                  f"root", flush=True)
            seconds = refresh(defn, root, logs)
            stamp.update({"files": inputs["files"], "refreshed": time.strftime("%Y-%m-%d %H:%M:%S"),
                          "refresh_seconds": seconds})
            stamp_path.write_text(json.dumps(stamp, indent=2))
            summary["root"] = f"refreshed in {seconds:.0f} s ({', '.join(stale)} changed)"
        else:
            summary["root"] = "reused"
        t0 = time.monotonic()
        run_test(root, logs)
        summary["test_seconds"] = time.monotonic() - t0
    notes = check_versions(root, logs, ROOT / LOCK)
    t0 = time.monotonic()
    scores = run_score_rule(root, logs)
    summary.update({"rule_seconds": time.monotonic() - t0, "scores": scores, "notes": notes,
                    "build_seconds": stamp["build_seconds"], "stage_seconds": stamp.get("stage_seconds", {}),
                    "root_bytes": stamp["root_bytes"], "seconds": time.monotonic() - started,
                    "load_average": {"before": load_before, "after": os.getloadavg()}})
    (BUILD / "check.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--definition", type=Path, default=DEFINITION)
    parser.add_argument("--rebuild", action="store_true", help="build the root even if its stamp matches")
    parser.add_argument("--stop-after", choices=("bootstrap", "post"),
                        help="stop the build after this step (to try a changed lock quickly)")
    parser.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE",
                        help="as apptainer build --build-arg; DEBIAN_MIRROR defaults to this machine's apt mirror")
    args = parser.parse_args(argv)
    build_args = {}
    mirror = host_debian_mirror()
    if mirror:
        build_args["DEBIAN_MIRROR"] = mirror
    for item in args.build_arg:
        name, eq, value = item.partition("=")
        if not eq or not name:
            parser.error(f"--build-arg {item!r}: expected NAME=VALUE")
        build_args[name] = value
    try:
        summary = check(args.definition.resolve(), args.stop_after, args.rebuild, build_args)
    except ContainerCheckError as err:
        print(f"container-check: FAILED: {err}", file=sys.stderr)
        return 1
    if "stopped_after" in summary:
        return 0
    gb = summary["root_bytes"] / 1e9
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in summary["stage_seconds"].items())
    print(f"container-check: passed in {summary['seconds']:.0f} s. Root {BUILD / 'root'} ({summary['root']}): "
          f"{gb:.2f} GB, built in {summary['build_seconds']:.0f} s ({stages}). %test "
          f"passed; every pin of {LOCK} installed at its version, as in .venv; the image's ccfv is the working "
          f"tree's; the score rule's output inside the image equals .venv's ({len(summary['scores'])} scores).")
    for note in summary["notes"]:
        print(f"container-check: note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
