"""Install the jars of an Apache Kafka release into Steplog's cache, with Maven.

There is no Docker and no Kafka tarball on these machines; Maven Central is reachable through
`mvn` only. So a release is "installed" by rendering `pom.xml` (this package) with the version and
letting `mvn dependency:copy-dependencies` copy the broker and its runtime dependencies into
`<cache dir>/kafka-<version>/libs`.

Failure protocol: the libs dir exists only if it is complete. Maven fills a temporary dir beside
it and the finished dir is renamed into place (one atomic rename on the same filesystem), so an
install killed at any point leaves at most a `.libs-*` temporary dir, which the next install
removes, and never a half-filled `libs` that later starts a broker with missing classes.
Concurrent installers (two pytest runs, a test and the CLI) serialise on an fcntl lock file;
the loser finds the libs dir in place once it gets the lock and returns it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from steplog.server.broker.locking import exclusive_lock
from steplog.errors import BrokerError

_VERSION = re.compile(r"\d+\.\d+\.\d+")
_POM_PLACEHOLDER = "@KAFKA_VERSION@"
_MVN_TIMEOUT_S = 900.0
_OUTPUT_TAIL_LINES = 30
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def kafka_libs_dir(version: str, cache_dir: Path) -> Path:
    """Where the jars of Kafka `version` live (or will live) under `cache_dir`."""
    return cache_dir / f"kafka-{version}" / "libs"


def require_executables(*names: str) -> list[str]:
    """The paths of `names` on PATH, or a BrokerError naming every missing one and the Debian
    package that provides it."""
    packages = {"java": "openjdk-17-jre-headless", "mvn": "maven"}
    found = [shutil.which(name) for name in names]
    missing = [name for name, path in zip(names, found, strict=True) if path is None]
    if missing:
        listed = ", ".join(f"`{name}`" for name in missing)
        install = " ".join(packages.get(name, name) for name in missing)
        raise BrokerError(
            f"{listed} not found on PATH; the local Kafka broker needs "
            f"{'them' if len(missing) > 1 else 'it'} (Debian/Ubuntu: apt-get install {install})"
        )
    return [path for path in found if path is not None]


def ensure_kafka_jars(version: str, cache_dir: Path, *, maven_repo: Path | None = None) -> Path:
    """Return `<cache_dir>/kafka-<version>/libs`, resolving it with Maven only when missing.

    Idempotent and safe to call from several processes at once. `maven_repo` is passed to Maven
    as `-Dmaven.repo.local` (None: Maven's default, ~/.m2/repository); the benchmark points it at
    an empty dir to measure a true download. Raises BrokerError when the version is not a release
    number, when `java` or `mvn` is missing, or when Maven fails (with the tail of its output).
    """
    if not _VERSION.fullmatch(version):
        raise BrokerError(f"Kafka version {version!r}: expected a release number such as 4.2.0")
    libs = kafka_libs_dir(version, cache_dir)
    if libs.is_dir():
        # Complete by construction: it only ever appears through the final rename.
        return libs
    # mvn runs on java, and so will the broker: name both now if either is missing.
    _, mvn = require_executables("java", "mvn")

    release_dir = libs.parent
    release_dir.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(release_dir / ".install.lock"):
        if libs.is_dir():  # another process installed it while we waited for the lock
            return libs
        # Holding the lock, no other install is in progress: leftovers are from killed ones.
        for stale in release_dir.glob(".libs-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=".libs-", dir=release_dir))
        try:
            _run_maven(mvn, version, staging, libs, maven_repo)
            # Same parent dir, so same filesystem: rename is atomic.
            os.rename(staging / "libs", libs)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return libs


def _run_maven(
    mvn: str, version: str, staging: Path, target: Path, maven_repo: Path | None
) -> None:
    template = (
        resources.files("steplog.server.broker").joinpath("pom.xml").read_text(encoding="utf-8")
    )
    pom = staging / "pom.xml"
    pom.write_text(template.replace(_POM_PLACEHOLDER, version), encoding="utf-8")
    command = [
        mvn,
        "-B",
        "-q",
        # -B alone still lets Maven 3.8 emit colour resets into captured output.
        "-Dstyle.color=never",
        "-f",
        str(pom),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging / 'libs'}",
    ]
    if maven_repo is not None:
        command.append(f"-Dmaven.repo.local={maven_repo}")
    print(
        f"steplog: fetching Apache Kafka {version} jars from Maven Central into "
        f"{target} (~45 MB; a minute on a cold machine)",
        file=sys.stderr,
        flush=True,
    )
    try:
        result = subprocess.run(
            command,
            cwd=staging,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=_MVN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(
            f"mvn did not finish resolving Kafka {version} within {_MVN_TIMEOUT_S:.0f} s"
            f"{_tail_of(exc.output)}"
        ) from None
    if result.returncode != 0:
        raise BrokerError(
            f"mvn failed (exit {result.returncode}) resolving org.apache.kafka:kafka_2.13:"
            f"{version}; command: {' '.join(command)}{_tail_of(result.stdout)}"
        )
    if not any((staging / "libs").glob("kafka_2.13-*.jar")):
        raise BrokerError(
            f"mvn succeeded but copied no kafka_2.13 jar into {staging / 'libs'}"
            f"{_tail_of(result.stdout)}"
        )


def _tail_of(output: str | bytes | None) -> str:
    if not output:
        return ""
    text = output.decode(errors="replace") if isinstance(output, bytes) else output
    text = _ANSI_ESCAPE.sub("", text)
    lines = text.rstrip().splitlines()[-_OUTPUT_TAIL_LINES:]
    return "\nlast lines of its output:\n" + "\n".join(lines)
