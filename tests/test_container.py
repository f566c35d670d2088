"""containers/ccfv.def and its builder containers/check.py, without building anything: the definition
bootstraps Debian alone, installs the lock as `make .venv` does and has a %test that fails when any of its
commands fails; the builder's parser, stamp, mount and failure-message logic. The build itself is `make
container-check` (root, network, minutes: docs/cluster.md), which CI does not run."""
from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEF = ROOT / "containers" / "ccfv.def"


def _load_builder():
    spec = importlib.util.spec_from_file_location("ccfv_container_check", ROOT / "containers" / "check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


check = _load_builder()


@pytest.fixture(scope="module")
def definition():
    return check.parse_definition(DEF.read_text(), DEF)


def commands(script: str) -> list[str]:
    """The shell lines of a section, comments and blank lines dropped."""
    return [line.strip() for line in script.splitlines() if line.strip() and not line.strip().startswith("#")]


# --------------------------------------------------------------------------------------------------
# the definition
# --------------------------------------------------------------------------------------------------


def test_definition_bootstraps_the_debian_release_whose_python_is_the_locks(definition):
    check.check_buildable(definition)  # debootstrap header complete, only sections the builder runs, %files exist
    header = definition.header
    assert header["bootstrap"] == "debootstrap"
    assert header["mirrorurl"] == "{{ DEBIAN_MIRROR }}"  # the user's Debian mirror, as an Apptainer build argument
    assert "from" not in header  # no Docker Hub, no other registry
    # the lock is frozen for the Python that runs the tests (.venv's)
    assert check.DEBIAN_PYTHON[header["osversion"]] == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert {"python3", "python3-venv", "ca-certificates"} <= set(header["include"].replace(",", " ").split())


def test_definition_installs_the_lock_in_one_pip_call_then_the_package_alone(definition):
    files = dict(definition.files)
    assert files["requirements.lock"] == "/opt/ccfv/requirements.lock"
    package = str(Path(files["pyproject.toml"]).parent)
    assert files["ccfv"] == f"{package}/ccfv"
    installs = [shlex.split(line) for line in commands(definition.sections["post"]) if re.search(r"\bpip install\b", line)]
    assert len(installs) == 2, installs  # nothing installed beside the lock and the package
    lock_install, package_install = installs
    assert lock_install[lock_install.index("-r") + 1] == files["requirements.lock"]
    assert [a for a in lock_install[2:] if not a.startswith("-")] == [files["requirements.lock"]]
    assert "--no-deps" in package_install and package_install[-1] == package
    # the same two steps as `make .venv` (Makefile): so the same versions
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -r requirements.lock" in makefile and "--no-deps" in makefile
    # one venv, the one %environment puts first on PATH
    venv = lock_install[0].rsplit("/bin/", 1)[0]
    assert f"export PATH={venv}/bin:$PATH" in commands(definition.sections["environment"])


def _run_test_section(script: str) -> subprocess.CompletedProcess:
    """A %test as `apptainer test` runs it (a #!/bin/sh file, %environment sourced first), with .venv's
    bin standing in for the image's /opt/venv/bin."""
    venv_bin = Path(sys.executable).parent
    return subprocess.run(["/bin/sh", "-c", f'PATH="{venv_bin}:$PATH"; . /dev/stdin'], input="#!/bin/sh\n\n" + script,
                          capture_output=True, text=True, timeout=300)


def test_test_section_imports_the_stack_and_runs_the_cli(definition):
    test = definition.sections["test"]
    assert commands(test)[0] == "set -e"  # Apptainer runs %test without -e: only the last status would count
    assert re.search(r"import ccfv, torch, nnunetv2, monai\b", test)
    assert commands(test)[-1] == "ccfv --version"
    done = _run_test_section(test)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^ccfv \S+ torch 2\.14\.1", done.stdout, re.M) and "ccfv 0.1.0" in done.stdout


def test_a_failing_import_fails_the_test_section(definition):
    broken = definition.sections["test"].replace("import ccfv,", "import ccfv_not_installed, ccfv,")
    done = _run_test_section(broken)
    assert done.returncode != 0 and "ccfv_not_installed" in done.stderr
    assert "ccfv 0.1.0" not in done.stdout  # stopped at the import, never reached `ccfv --version`


# --------------------------------------------------------------------------------------------------
# the parser
# --------------------------------------------------------------------------------------------------


def test_parser_reads_header_sections_files_and_labels():
    defn = check.parse_definition(
        "# comment\nBootStrap: debootstrap\nOSVersion: bookworm\n\n%files\n  a.txt /opt/a.txt  # why\n  b\n"
        "%post -c /bin/bash\n  echo 1\n  # kept\n%labels\n  org.x.title ccfv image\n", "x.def")
    assert defn.header == {"bootstrap": "debootstrap", "osversion": "bookworm"}
    assert defn.files == [("a.txt", "/opt/a.txt"), ("b", "/b")]
    assert defn.args["post"] == "-c /bin/bash"
    assert defn.sections["post"] == "  echo 1\n  # kept"
    assert defn.labels == {"org.x.title": "ccfv image"}


@pytest.mark.parametrize("text, message", [
    ("Bootstrap debootstrap\n", r"x\.def:1: header line 'Bootstrap debootstrap' is not 'Key: value'"),
    ("Bootstrap: debootstrap\n%post\n  true\n%postt\n", r"x\.def:4: unknown section %postt"),
    ("Bootstrap: debootstrap\n%post\n  true\n%test\n  true\n%post\n", r"x\.def:6: section %post given twice \(first at line 2\)"),
])
def test_parser_names_file_and_line_of_a_mistake(text, message):
    with pytest.raises(ValueError, match=message):
        check.parse_definition(text, "x.def")


@pytest.mark.parametrize("line, message", [
    ("a b c", r"x\.def:3: %files line 'a b c': expected 'source \[destination\]', got 3 words"),
    ("a /opt/../../etc/a", r"x\.def:3: %files destination '/opt/../../etc/a' leaves the image"),
])
def test_bad_files_lines_are_refused(line, message):
    defn = check.parse_definition(f"Bootstrap: debootstrap\n%files\n  {line}\n", "x.def")
    with pytest.raises(ValueError, match=message):
        defn.files


def test_builder_refuses_what_it_cannot_build_like_apptainer():
    docker = check.parse_definition("Bootstrap: docker\nFrom: debian:12\n%post\n  true\n", "d.def")
    with pytest.raises(check.ContainerCheckError, match="Bootstrap is 'docker'"):
        check.check_buildable(docker)
    setup = check.parse_definition("Bootstrap: debootstrap\nMirrorURL: http://m\nOSVersion: bookworm\n%setup\n  x\n",
                                   "s.def")
    with pytest.raises(check.ContainerCheckError, match=r"does not run section\(s\) %setup"):
        check.check_buildable(setup)
    no_version = check.parse_definition("Bootstrap: debootstrap\nMirrorURL: http://m\n", "v.def")
    with pytest.raises(check.ContainerCheckError, match="needs OSVersion"):
        check.check_buildable(no_version)


# --------------------------------------------------------------------------------------------------
# stamp, mounts, versions
# --------------------------------------------------------------------------------------------------


def test_content_digest_sees_contents_and_executable_bits_not_bytecode(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.json").write_text("{}")
    first = check.content_digest(pkg)
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    assert check.content_digest(pkg) == first
    (pkg / "sub" / "b.json").write_text("{ }")
    second = check.content_digest(pkg)
    assert second != first
    (pkg / "a.py").chmod(0o755)
    assert check.content_digest(pkg) != second


def test_rebuild_only_for_the_definition_or_the_lock_refresh_for_the_package():
    inputs = {"definition": "d", "files": {"requirements.lock": "l", "ccfv": "c", "README.md": "r"}}
    assert check.rebuild_reasons(None, inputs) == ["no root built yet"]
    assert check.rebuild_reasons(dict(inputs), inputs) == []
    assert check.rebuild_reasons({**inputs, "definition": "old"}, inputs) == ["the definition changed"]
    assert check.rebuild_reasons({**inputs, "files": {**inputs["files"], "requirements.lock": "old"}},
                                 inputs) == ["requirements.lock changed"]
    package_changed = {**inputs, "files": {**inputs["files"], "ccfv": "old"}}
    assert check.rebuild_reasons(package_changed, inputs) == []
    assert check.stale_sources(package_changed, inputs) == ["ccfv"]
    assert check.stale_sources(dict(inputs), inputs) == []


def test_mounts_under_reads_mountinfo_with_escaped_names():
    mountinfo = ("22 1 8:1 / / rw - ext4 /dev/vda rw\n"
                 "40 22 0:5 / /work/main/build/container/root/proc rw - proc proc rw\n"
                 "41 22 0:6 / /work/main/build/container/root\\040x/dev rw - tmpfs t rw\n"
                 "42 22 0:7 / /work/main/build/container/rootfs rw - tmpfs t rw\n")
    root = Path("/work/main/build/container/root")
    assert check.mounts_under(root, mountinfo) == ["/work/main/build/container/root/proc"]
    assert check.mounts_under(Path("/work/main/build/container/root x"), mountinfo) == [
        "/work/main/build/container/root x/dev"]


def test_remove_tree_refuses_a_tree_with_a_live_mount(tmp_path, monkeypatch):
    tree = tmp_path / "root"
    (tree / "proc").mkdir(parents=True)
    monkeypatch.setattr(check, "mounts_under", lambda path, mountinfo=None: [f"{tree}/proc"])
    with pytest.raises(check.ContainerCheckError, match="refusing to delete .*still mounted"):
        check.remove_tree(tree)
    assert (tree / "proc").is_dir()


def test_compare_versions_names_every_difference():
    lock = {"torch": "2.14.1", "numpy": "2.4.6"}
    same = {"torch": "2.14.1", "numpy": "2.4.6", "pip": "23.0.1", "argparse": "1.4.0"}
    assert check.compare_versions(same, {**same, "pip": "23.2.1"}, lock) == []
    problems = check.compare_versions({"torch": "2.13.0", "argparse": "1.4.0"}, {**same}, lock)
    assert problems == ["torch: lock 2.14.1, image 2.13.0", "numpy: lock 2.4.6, image not installed"]
    assert check.compare_versions(same, {**same, "argparse": "1.3.0"}, lock) == [
        "argparse (not in the lock): image 1.4.0, .venv 1.3.0"]


# --------------------------------------------------------------------------------------------------
# the message when %post fails
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pin, offered, expected", [
    ("ccfv-no-such-package==1.0", [], "pip found no release of it for the image's Python and platform"),
    ("six==1.99.0", ["1.16.0", "1.17.0"],
     "pip found 2 other release(s) for the image's Python and platform, the last: 1.16.0, 1.17.0"),
])
def test_a_pin_pip_cannot_install_is_named_with_its_lock_line(tmp_path, monkeypatch, pin, offered, expected):
    """Real pip output for an uninstallable pin (pip --dry-run on a local folder of wheel names, no index, no
    download), behind the line `sh -x` traces for the failing command, explained against a lock file that
    has the pin on line 4."""
    lock = tmp_path / "requirements.lock"
    lock.write_text(f"# pinned\n\nnumpy==2.4.6\n{pin}\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for version in offered:  # pip lists candidates by file name and opens none that it does not pick
        (wheels / f"six-{version}-py2.py3-none-any.whl").touch()
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--find-links",
                          str(wheels), pin], capture_output=True, text=True)
    assert pip.returncode != 0
    log = ("+ python3 -m venv /opt/venv\n+ /opt/venv/bin/pip install --no-cache-dir -r /opt/ccfv/requirements.lock\n"
           + pip.stdout + pip.stderr)
    monkeypatch.setattr(check, "ROOT", tmp_path)
    defn = check.parse_definition(DEF.read_text(), DEF)
    message = check.explain_post_failure(defn, 1, log, tmp_path / "post.log")
    assert "failed (exit 1) in the command\n    /opt/venv/bin/pip install --no-cache-dir -r /opt/ccfv/requirements.lock" in message
    assert f"requirements.lock:4: {pin} cannot be installed in the image ({expected})" in message
    assert "numpy" not in message
    assert message.endswith(f"full log: {tmp_path / 'post.log'}")


def test_a_pin_that_needs_another_python_points_at_the_debian_release(definition):
    # the lines pip 23.0.1 printed in the image for a missing pin (its "Ignored ..." line lists every package's
    # releases for other Pythons, without names); here the pinned release is one of those
    log = ("+ /opt/venv/bin/pip install --no-cache-dir -r /opt/ccfv/requirements.lock\n"
           "ERROR: Ignored the following versions that require a different python version: 1.18.0 Requires-Python "
           ">=3.12; 2.5.0 Requires-Python >=3.12\n"
           "ERROR: Could not find a version that satisfies the requirement scipy==1.18.0 (from versions: 1.16.0, "
           "1.17.1)\nERROR: No matching distribution found for scipy==1.18.0\n")
    message = check.explain_post_failure(definition, 1, log, Path("post.log"))
    assert ("scipy==1.18.0 cannot be installed in the image (pip found 2 other release(s) for the image's Python "
            "and platform, the last: 1.16.0, 1.17.1; pip ignored a 1.18.0 that requires another Python (1.18.0 "
            "Requires-Python >=3.12), so the image's Debian release may be the wrong one)") in message


def test_an_unreachable_index_is_not_reported_as_a_missing_pin(definition):
    # what pip printed inside the image before the host's CA bundle was passed in (this machine's proxy)
    log = ("+ /opt/venv/bin/pip install --no-cache-dir -r /opt/ccfv/requirements.lock\n"
           "WARNING: Retrying (Retry(total=0, connect=None, read=None, redirect=None, status=None)) after connection "
           "broken by 'SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify "
           "failed: self-signed certificate in certificate chain (_ssl.c:992)'))': /simple/acvl-utils/\n"
           "ERROR: Could not find a version that satisfies the requirement acvl_utils==0.2.6 (from versions: none)\n"
           "ERROR: No matching distribution found for acvl_utils==0.2.6\n")
    message = check.explain_post_failure(definition, 1, log, Path("post.log"))
    assert re.search(r"could not reach the package index from inside the image \((SSLError|CERTIFICATE_VERIFY_FAILED)\)",
                     message)
    assert "cannot be installed" not in message


def test_container_check_is_a_make_target_outside_make_test():
    makefile = (ROOT / "Makefile").read_text()
    target = re.search(r"^container-check:.*\n((?:\t.*\n)+)", makefile, re.M)
    assert target and "containers/check.py" in target.group(1)
    test_recipe = re.search(r"^test:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert "container" not in test_recipe
    ignored = subprocess.run(["git", "check-ignore", "-q", "build/container/root"], cwd=ROOT)
    assert ignored.returncode == 0, "build/ must be git-ignored"


def test_build_arguments_fill_the_header_as_apptainer_does(definition, tmp_path):
    filled = check.apply_build_args(definition, {"DEBIAN_MIRROR": "http://mirror.example/debian"})
    assert filled.header["mirrorurl"] == "http://mirror.example/debian"
    assert definition.header["mirrorurl"] == "{{ DEBIAN_MIRROR }}"  # the parsed definition is left as it was
    with pytest.raises(check.ContainerCheckError, match="needs the build argument DEBIAN_MIRROR"):
        check.apply_build_args(definition, {})


def test_the_host_mirror_is_read_from_apt_sources(tmp_path):
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\n# a comment\nURIs: http://mirror.example/debian http://other.example/debian\n"
                      "Suites: bookworm\n")
    legacy = tmp_path / "sources.list"
    legacy.write_text("# deb http://commented.example/debian bookworm main\n"
                      "deb [signed-by=/k.gpg] http://legacy.example/debian bookworm main\n")
    assert check.host_debian_mirror(deb822, legacy) == "http://mirror.example/debian"
    assert check.host_debian_mirror(tmp_path / "missing", legacy) == "http://legacy.example/debian"
    assert check.host_debian_mirror(tmp_path / "missing", tmp_path / "missing2") is None


# --------------------------------------------------------------------------------------------------
# the host tools: installed with apt-get as root (as the tests install slurm-wlm), else the exact command
# --------------------------------------------------------------------------------------------------


class FakeHost:
    """``which`` and ``apt_get`` of a machine where ``present`` programs exist; an ``install`` puts its packages'
    programs there only once ``update`` ran when ``needs_update`` (a fresh machine's empty package list)."""

    PROGRAMS = {"debootstrap": ["debootstrap"], "util-linux": ["unshare"], "coreutils": ["chroot"], "dpkg": ["dpkg"]}

    def __init__(self, present, needs_update=False, broken=False):
        self.present, self.needs_update, self.broken = set(present), needs_update, broken
        self.calls: list[tuple[str, ...]] = []

    def which(self, program):
        return f"/usr/bin/{program}" if program in self.present else None

    def apt_get(self, *args):
        self.calls.append(args)
        if args[0] == "update":
            self.needs_update = False
            return 0, "Reading package lists..."
        if self.needs_update or self.broken:
            return 100, "E: Unable to locate package debootstrap"
        for package in [a for a in args if a in self.PROGRAMS]:
            self.present.update(self.PROGRAMS[package])
        return 0, "Setting up debootstrap"


EVERYTHING = {"debootstrap", "unshare", "chroot", "dpkg", "apt-get"}


def test_nothing_is_installed_when_the_host_tools_are_there():
    host = FakeHost(EVERYTHING)
    assert check.ensure_host_tools(host.which, is_root=True, apt_get=host.apt_get, log=lambda m: None) == []
    assert check.ensure_host_tools(host.which, is_root=False, apt_get=host.apt_get, log=lambda m: None) == []
    assert host.calls == []


def test_missing_debootstrap_is_installed_with_apt_get_as_root():
    host = FakeHost(EVERYTHING - {"debootstrap"})
    assert check.ensure_host_tools(host.which, is_root=True, apt_get=host.apt_get, log=lambda m: None) == ["debootstrap"]
    assert host.calls == [("install", "-y", "-q", "--no-install-recommends", "debootstrap")]


def test_a_fresh_machine_updates_the_package_list_then_installs_again():
    """The failure of a fresh machine: its package list is empty until apt-get update."""
    host = FakeHost(EVERYTHING - {"debootstrap"}, needs_update=True)
    assert check.ensure_host_tools(host.which, is_root=True, apt_get=host.apt_get, log=lambda m: None) == ["debootstrap"]
    assert [c[0] for c in host.calls] == ["install", "update", "install"]


def test_not_root_fails_with_the_exact_command_and_installs_nothing():
    host = FakeHost(EVERYTHING - {"debootstrap"})
    with pytest.raises(check.ContainerCheckError) as caught:
        check.ensure_host_tools(host.which, is_root=False, apt_get=host.apt_get, log=lambda m: None)
    assert str(caught.value) == ("needs root, and debootstrap is not installed: as root, run `apt-get update && "
                                 "apt-get install -y --no-install-recommends debootstrap`, then `make "
                                 "container-check` as root")
    assert host.calls == []


def test_an_install_that_fails_names_the_command_and_apt_gets_last_lines():
    host = FakeHost(EVERYTHING - {"debootstrap", "unshare"}, broken=True)
    with pytest.raises(check.ContainerCheckError) as caught:
        check.ensure_host_tools(host.which, is_root=True, apt_get=host.apt_get, log=lambda m: None)
    message = str(caught.value)
    assert message.startswith("apt-get could not install debootstrap util-linux (exit 100; still missing: "
                              "debootstrap, unshare); run `apt-get update && apt-get install -y "
                              "--no-install-recommends debootstrap util-linux`")
    assert message.endswith("E: Unable to locate package debootstrap")


def test_without_apt_get_the_packages_are_named():
    host = FakeHost(EVERYTHING - {"debootstrap", "apt-get"})
    with pytest.raises(check.ContainerCheckError, match=r"no apt-get: install the package\(s\) debootstrap with"):
        check.ensure_host_tools(host.which, is_root=True, apt_get=host.apt_get, log=lambda m: None)
    assert host.calls == []
