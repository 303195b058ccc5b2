"""A real, throwaway Apache Kafka broker for the test suite.

Three ways to get one, tried in this order by :func:`kafka_for_tests`:

1. ``RELAY_TEST_KAFKA=host:port`` names an existing broker (nothing is started or stopped);
2. a Docker daemon answers a ping: an ``apache/kafka`` container via testcontainers;
3. otherwise :class:`KafkaBroker`: a single-node KRaft broker (broker + controller in one JVM)
   run from the Maven Central jars that ``tests/kafka/fetch.sh`` downloads into
   ``.cache/kafka-jars`` (override with ``KAFKA_JARS_DIR``). Needs ``java`` (17+) and, the
   first time, ``mvn`` with access to Maven Central.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "KAFKA_IMAGE",
    "KafkaBroker",
    "KafkaUnavailableError",
    "default_jars_dir",
    "ensure_kafka_jars",
    "kafka_for_tests",
    "wait_for_kafka",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_DIR = Path(__file__).resolve().parent / "kafka"
FETCH_SCRIPT = KAFKA_DIR / "fetch.sh"
LOG4J_CONFIG = KAFKA_DIR / "log4j2.yaml"
KAFKA_IMAGE = "apache/kafka:4.1.1"

# Small-footprint, fast-start JVM: C1 only (tests are short), serial GC, no perf data file.
JVM_FLAGS: tuple[str, ...] = (
    "-Xms64m",
    "-Xmx512m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-XX:-UsePerfData",
    "-Xshare:auto",
    "-Djava.awt.headless=true",
    "-Djava.net.preferIPv4Stack=true",
)


class KafkaUnavailableError(RuntimeError):
    """No Kafka broker could be provided (no java, jars not fetchable, broker did not start)."""


def default_jars_dir() -> Path:
    """Where fetch.sh puts the broker jars: ``$KAFKA_JARS_DIR`` or ``<repo>/.cache/kafka-jars``."""
    env = os.environ.get("KAFKA_JARS_DIR")
    return Path(env) if env else REPO_ROOT / ".cache" / "kafka-jars"


def _has_kafka_jars(jars_dir: Path) -> bool:
    return any(jars_dir.glob("kafka_2.13-*.jar"))


def ensure_kafka_jars(jars_dir: Path | None = None, timeout: float = 600) -> Path:
    """Run ``tests/kafka/fetch.sh`` (idempotent, ~10 ms when up to date) and return the jars dir.

    If the fetch fails but jars are already there (e.g. offline with a pre-filled dir), those are
    used. Raises :class:`KafkaUnavailableError` when there are no usable jars.
    """
    jars_dir = (jars_dir or default_jars_dir()).resolve()
    env = {**os.environ, "KAFKA_JARS_DIR": str(jars_dir)}
    try:
        proc = subprocess.run(
            ["bash", str(FETCH_SCRIPT)],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        problem = f"{FETCH_SCRIPT} could not run: {exc}"
    else:
        if proc.returncode == 0 and _has_kafka_jars(jars_dir):
            return jars_dir
        tail = (proc.stdout + proc.stderr).strip()[-2000:]
        problem = f"{FETCH_SCRIPT} exited {proc.returncode}: {tail}"
    if _has_kafka_jars(jars_dir):
        return jars_dir
    raise KafkaUnavailableError(f"no Kafka jars in {jars_dir}; {problem}")


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    found = shutil.which("java")
    if found is None:
        raise KafkaUnavailableError("no `java` on PATH (and JAVA_HOME unset); Kafka needs JDK 17+")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _new_cluster_id() -> str:
    # Same format as org.apache.kafka.common.Uuid: 16 random bytes, url-safe base64, unpadded.
    # Kafka never generates ids starting with "-" (they would look like CLI flags).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


async def _probe(bootstrap: str, request_timeout_ms: int) -> int:
    """Return the number of brokers in a metadata response (raises when it cannot get one)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=request_timeout_ms,
        retry_backoff_ms=100,
    )
    try:
        await admin.start()
        cluster: dict[str, Any] = await admin.describe_cluster()
        return len(cluster.get("brokers", []))
    finally:
        await admin.close()


def _probe_sync(bootstrap: str, request_timeout_ms: int = 5000) -> int:
    # Run in a fresh thread with its own event loop, so start()/restart() also work when called
    # from inside a running loop (an async test); asyncio.run() would refuse there.
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kafka-probe") as pool:
        return pool.submit(asyncio.run, _probe(bootstrap, request_timeout_ms)).result()


def _tcp_check(bootstrap: str) -> None:
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=2):
        pass


def wait_for_kafka(
    bootstrap: str,
    timeout: float = 90,
    alive: Callable[[], str | None] | None = None,
) -> None:
    """Block until a metadata request to ``bootstrap`` succeeds and lists at least one broker.

    ``alive`` is polled between attempts; when it returns a string (the broker died, with why),
    waiting stops with :class:`KafkaUnavailableError`. So does the timeout.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if alive is not None and (why := alive()) is not None:
            raise KafkaUnavailableError(why)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KafkaUnavailableError(
                f"Kafka at {bootstrap} not ready after {timeout:.0f}s: {last_error!r}"
            )
        try:
            # Cheap TCP check first: avoids aiokafka logging "Unable connect" on every attempt.
            _tcp_check(bootstrap)
            if _probe_sync(bootstrap, int(min(5.0, max(remaining, 1.0)) * 1000)) > 0:
                return
            last_error = RuntimeError("metadata response lists no brokers yet")
        except Exception as exc:
            last_error = exc
        time.sleep(0.2)


# Brokers still running at interpreter exit (pytest killed by an exception, a forgotten close())
# get stopped, so no orphaned JVM keeps the ports and the temp dir.
_LIVE: weakref.WeakSet[KafkaBroker] = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:
    for broker in list(_LIVE):
        with contextlib.suppress(Exception):
            broker.close()


class KafkaBroker:
    """A single-node KRaft Kafka broker (broker + controller) as a child JVM.

    Ports are picked once (127.0.0.1) and kept across :meth:`restart`, as are the log dirs, so
    committed data survives a restart. Everything lives in ``workdir`` (a fresh temp dir unless
    given); :meth:`close` stops the broker and removes a temp dir it created. The broker's
    stdout/stderr go to ``<workdir>/broker.log`` (log4j WARN and above, see
    ``tests/kafka/log4j2.yaml``).
    """

    def __init__(self, jars_dir: Path | None = None, workdir: Path | None = None) -> None:
        self.jars_dir = (jars_dir or default_jars_dir()).resolve()
        self._owns_workdir = workdir is None
        self.workdir = (
            Path(tempfile.mkdtemp(prefix="relay-kafka-")) if workdir is None else workdir.resolve()
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.controller_port = _free_port()
        while self.controller_port == self.port:
            self.controller_port = _free_port()
        self.cluster_id = _new_cluster_id()
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "server.properties"
        self.log_path = self.workdir / "broker.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._closed = False
        self.last_start_seconds: float | None = None

    # -- public API -------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``bootstrap_servers`` value for clients: ``"127.0.0.1:<port>"``."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """PID of the broker JVM, or None when not started."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 90) -> None:
        """Format the storage if needed, launch the JVM, and wait until metadata requests work."""
        if self._closed:
            raise RuntimeError("KafkaBroker is closed")
        if self.running:
            return
        began = time.monotonic()
        if not _has_kafka_jars(self.jars_dir):
            raise KafkaUnavailableError(
                f"no Kafka jars in {self.jars_dir}; run `bash tests/kafka/fetch.sh` "
                "(or use ensure_kafka_jars())"
            )
        java = _java()
        self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            self._format(java, timeout)
        self._launch(java)
        _LIVE.add(self)
        try:
            wait_for_kafka(
                self.bootstrap,
                timeout=max(1.0, timeout - (time.monotonic() - began)),
                alive=self._death_reason,
            )
        except KafkaUnavailableError as exc:
            self.stop()
            tail = self.log_tail()
            raise KafkaUnavailableError(f"{exc}\n--- {self.log_path} (tail) ---\n{tail}") from None
        self.last_start_seconds = time.monotonic() - began

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (controlled shutdown) and wait; SIGKILL if still alive after ``timeout`` s."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=30)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def kill(self) -> None:
        """SIGKILL the broker (a crash, not a clean shutdown); restart() recovers the logs."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.stop(timeout=30)

    def restart(self, timeout: float = 90) -> None:
        """Stop, then start again on the same ports with the same log dirs (data survives)."""
        self.stop()
        self.start(timeout=timeout)

    def close(self) -> None:
        """Stop the broker and remove its workdir if this object created it."""
        self.stop()
        self._closed = True
        _LIVE.discard(self)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, max_chars: int = 4000) -> str:
        """The end of ``broker.log`` (format + broker output), for error messages."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "<no log>"
        return data[-max_chars:].decode("utf-8", "replace")

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<KafkaBroker {self.bootstrap} {state} workdir={self.workdir}>"

    # -- internals --------------------------------------------------------------------------

    def _properties(self) -> dict[str, str]:
        controller = f"127.0.0.1:{self.controller_port}"
        return {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{controller}",
            "listeners": f"PLAINTEXT://{self.bootstrap},CONTROLLER://{controller}",
            "advertised.listeners": f"PLAINTEXT://{self.bootstrap}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "share.coordinator.state.topic.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
        }

    def _write_config(self) -> None:
        lines = [f"{key}={value}" for key, value in self._properties().items()]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _java_cmd(self, java: str, main: str, *args: str) -> list[str]:
        return [
            java,
            *JVM_FLAGS,
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            f"{self.jars_dir}/*",
            main,
            *args,
        ]

    def _format(self, java: str, timeout: float) -> None:
        cmd = self._java_cmd(
            java,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            self.cluster_id,
            "-c",
            str(self.config_path),
            "--ignore-formatted",
        )
        with self.log_path.open("ab") as log:
            log.write(f"$ {' '.join(cmd)}\n".encode())
            log.flush()
            try:
                rc = subprocess.run(
                    cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout, check=False
                ).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        if rc != 0:
            raise KafkaUnavailableError(
                f"kafka StorageTool format failed (exit {rc})\n--- {self.log_path} (tail) ---\n"
                f"{self.log_tail()}"
            )

    def _launch(self, java: str) -> None:
        cmd = self._java_cmd(java, "kafka.Kafka", str(self.config_path))
        self._log_file = self.log_path.open("ab")
        self._log_file.write(f"$ {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )

    def _death_reason(self) -> str | None:
        if self._proc is None:
            return "broker process was never started"
        rc = self._proc.poll()
        if rc is None:
            return None
        return f"Kafka broker process exited early with code {rc}"


# -- selection for the test suite ------------------------------------------------------------


def _docker_daemon_available() -> bool:
    """True only if a Docker daemon answers a ping (the docker CLI existing is not enough)."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _kafka_in_docker(timeout: float = 120) -> tuple[str, Callable[[], None]]:
    """A single-node KRaft ``apache/kafka`` container via testcontainers (best effort)."""
    from testcontainers.core.container import DockerContainer

    host_port = _free_port()
    container = DockerContainer(KAFKA_IMAGE)
    host = container.get_docker_client().host()  # "localhost" for a local daemon
    # Clients connect to <host>:<host_port>, so that must be the advertised address. The port is
    # bound explicitly (not a random mapping) because it has to be known before the start.
    # Env per the apache/kafka image docs (KAFKA_<PROPERTY_WITH_UNDERSCORES>).
    env = {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{host}:{host_port}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_NUM_PARTITIONS": "1",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    }
    container.with_bind_ports(9092, host_port).with_envs(**env)
    container.start()
    bootstrap = f"{host}:{host_port}"
    try:
        wait_for_kafka(bootstrap, timeout=timeout)
    except BaseException as exc:
        logs = b"".join(container.get_logs()).decode("utf-8", "replace")[-4000:]
        container.stop()
        raise KafkaUnavailableError(f"{exc}\n--- container logs (tail) ---\n{logs}") from exc
    return bootstrap, container.stop


def kafka_for_tests(timeout: float = 120) -> tuple[str, Callable[[], None] | None]:
    """Provide a Kafka broker for the test session: ``(bootstrap, stop)``.

    1. ``RELAY_TEST_KAFKA=host:port`` is set: use it; ``stop`` is None (not ours to stop).
    2. A Docker daemon answers a ping: an ``apache/kafka`` container via testcontainers.
    3. Otherwise a :class:`KafkaBroker` from the Maven jars (fetched via tests/kafka/fetch.sh
       when missing).

    Raises :class:`KafkaUnavailableError` (with the reason) when none of these works.
    """
    external = os.environ.get("RELAY_TEST_KAFKA", "").strip()
    if external:
        return external, None
    docker_problem = ""
    if _docker_daemon_available():
        try:
            return _kafka_in_docker(timeout=timeout)
        except Exception as exc:  # e.g. image pull refused: fall back to the local JVM broker
            docker_problem = f"; Docker was tried first and failed: {exc!r}"
    try:
        broker = KafkaBroker(jars_dir=ensure_kafka_jars())
    except KafkaUnavailableError as exc:
        raise KafkaUnavailableError(f"{exc}{docker_problem}") from exc
    try:
        broker.start(timeout=timeout)
    except KafkaUnavailableError as exc:
        broker.close()
        raise KafkaUnavailableError(f"{exc}{docker_problem}") from exc
    except BaseException:
        broker.close()
        raise
    return broker.bootstrap, broker.close
