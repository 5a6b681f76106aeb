"""High availability (``--zk zk://HOST:PORT,…/PATH``), as Marathon does it.

Every ``hypervm-scheduler`` started with the same ``--zk`` joins one election in ZooKeeper
(kazoo's lock recipe on ``PATH/leader``: an ephemeral sequential node per scheduler whose data
is the address it serves its API on, ``--advertise``). The oldest node leads: it loads the
state from ZooKeeper (:mod:`scheduler.zkstore`), subscribes to Mesos with the stored framework
id and runs the framework; the others serve the API by forwarding every request to the leader
(:mod:`scheduler.leader_proxy`). When the leader dies, ZooKeeper removes its node once its
session expires (``--zk-session-timeout``) and the next scheduler leads. A leader that loses its
session (or stays disconnected longer than the session timeout) stops - as Marathon does - and
its supervisor starts it again as a standby.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlsplit

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import KazooException
from kazoo.retry import KazooRetry

from hypervm.frozen import frozen_dataclass
from scheduler.errors import ConfigError
from scheduler.zkstore import ZkStore

log = logging.getLogger(__name__)
#: seconds between ``DELETE /v2/leader`` and leaving the election (Marathon's delay)
ABDICATION_DELAY = 0.5


@frozen_dataclass
class ZkUrl:
    hosts: str  # host:port,host:port
    path: str  # /hypervm

    def __str__(self) -> str:
        return f"zk://{self.hosts}{self.path}"


def parse_zk(url: str, option: str = "--zk") -> ZkUrl:
    """``zk://host:port,host:port/path`` (no credentials: ZooKeeper ACLs are not used)."""
    parts = urlsplit(url)
    if parts.scheme not in ("zk", "zoo") or not parts.netloc or "@" in parts.netloc:
        raise ConfigError(f"{option} {url!r}: give zk://HOST:PORT[,HOST:PORT…]/PATH")
    path = parts.path.rstrip("/")
    if not path or parts.query or parts.fragment or "//" in path:
        raise ConfigError(f"{option} {url!r}: name a znode path, e.g. zk://zk1:2181/hypervm")
    for host in parts.netloc.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{option} {url!r}: {host!r} is not HOST:PORT")
    return ZkUrl(parts.netloc, path)


class Leadership:
    """This scheduler's place in the election: :meth:`campaign` waits to lead, :meth:`leader`
    names the leader, :attr:`lost` says why leading must stop."""

    def __init__(self, url: ZkUrl, advertise: str, session_timeout: float = 10.0) -> None:
        self.url, self.advertise, self.session_timeout = url, advertise, session_timeout
        # kazoo's DEBUG lines carry every znode's data (app definitions, their env): never
        for name in ("kazoo.client", "kazoo.protocol.connection"):
            logging.getLogger(name).setLevel(logging.INFO)
        self.client = KazooClient(
            hosts=url.hosts, timeout=session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.2, max_delay=1.0),
            command_retry=KazooRetry(max_tries=3, delay=0.2, max_delay=1.0))
        self.client.add_listener(self._state)
        self.lock = self.client.Lock(f"{url.path}/leader", advertise)
        self.elected = threading.Event()
        self._suspended_at: float | None = None
        self._expired = False
        self._last: str | None = None

    def start(self, timeout: float = 30.0) -> None:
        try:
            self.client.start(timeout=timeout)
            self.client.ensure_path(self.url.path)
        except (KazooException, OSError) as e:
            raise ConfigError(f"--zk {self.url}: cannot reach ZooKeeper: {e}") from e
        log.info("ZooKeeper %s: connected, %s joins the election", self.url, self.advertise)

    def _state(self, state: str) -> None:
        if state == KazooState.SUSPENDED:
            self._suspended_at = time.monotonic()
            log.warning("ZooKeeper connection suspended")
        elif state == KazooState.LOST:
            self._expired = True
            log.error("ZooKeeper session lost")
        else:
            self._suspended_at = None
            log.info("ZooKeeper connection back")

    def campaign(self) -> None:
        """Blocks until this scheduler leads (in a thread: ``elected`` is set then)."""
        try:
            self.lock.acquire()
        except Exception:  # a stop while waiting (the client closes) ends the campaign
            log.debug("election ended", exc_info=True)
            return
        log.info("elected leader (%s)", self.fence)
        self.elected.set()

    @property
    def fence(self) -> str:
        """This scheduler's election node: writes to the state check that it still exists."""
        return f"{self.lock.path}/{self.lock.node}"

    def leader(self) -> str | None:
        """HOST:PORT of the leader's API, None if none is elected. While the connection to
        ZooKeeper is suspended (a ZooKeeper node stopped, its clients move to another) the
        last leader seen is the answer, for at most the session timeout."""
        if self.elected.is_set() and self.lost is None:
            return self.advertise
        try:
            contenders = self.lock.contenders()
        except KazooException:
            return self._last if self.lost is None else None
        self._last = contenders[0] if contenders else None
        return self._last

    @property
    def lost(self) -> str | None:
        """Why this (elected) scheduler must stop leading, or None."""
        if self._expired:
            return "the ZooKeeper session expired"
        since = self._suspended_at
        if since is not None and time.monotonic() - since > self.session_timeout:
            return f"disconnected from ZooKeeper for more than {self.session_timeout:g} s"
        return None

    def stop(self) -> None:
        try:
            self.lock.cancel()
            if self.elected.is_set():
                self.lock.release()
        except KazooException:
            log.debug("releasing the election node failed", exc_info=True)
        self.client.stop()
        self.client.close()


def advertised(advertise: str | None, host: str, port: int) -> str:
    """HOST:PORT the other schedulers forward requests to (``--advertise``, else ``--listen``)."""
    if advertise:
        name, _, text = advertise.rpartition(":")
        if not name or not text.isdigit() or not 0 < int(text) < 65536:
            raise ConfigError(f"--advertise {advertise!r}: give HOST:PORT")
        return advertise
    if host.startswith("unix:") or host in ("0.0.0.0", "::", ""):
        raise ConfigError(f"--zk: with --listen {host}:{port}, give --advertise HOST:PORT (the "
                          "address the other schedulers reach this one's API at)")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Group:
    """The HA side of one scheduler process: the election, the API gate and the state."""

    def __init__(self, url: ZkUrl, advertise: str, session_timeout: float) -> None:
        self.leadership = Leadership(url, advertise, session_timeout)
        self.store_: ZkStore | None = None
        self._beat = time.monotonic()
        self._paused: str | None = None
        self._abdicate_at: float | None = None

    def join(self, stop: threading.Event) -> bool:
        """Campaign until elected (True) or ``stop`` (False)."""
        self.leadership.start()
        threading.Thread(target=self.leadership.campaign, name="election", daemon=True).start()
        while not stop.is_set():
            if self.leadership.elected.wait(0.5):
                return True
            if self.leadership.lost:
                raise ConfigError(f"--zk {self.leadership.url}: {self.leadership.lost}")
        return False

    def store(self) -> ZkStore:
        self._beat = time.monotonic()
        self.store_ = ZkStore(self.leadership.client, self.leadership.url.path,
                              self.leadership.fence, self.leadership.session_timeout)
        return self.store_

    def abdicate(self) -> None:
        """``DELETE /v2/leader``: stop leading in a moment (the answer goes out first, as
        Marathon waits 500 ms); :attr:`abdicated` tells the main loop when."""
        if self._abdicate_at is None:
            self._abdicate_at = time.monotonic() + ABDICATION_DELAY
            log.warning("leadership abdication requested (DELETE /v2/leader)")

    @property
    def abdicated(self) -> bool:
        return self._abdicate_at is not None and time.monotonic() >= self._abdicate_at

    def adopt_tables(self) -> None:
        if self.store_ is not None:
            self.store_.sync_tables()

    @property
    def lost(self) -> str | None:
        """Why this leader must stop: its session, a fenced write, or a pause (the process was
        frozen or starved) long enough for its session to have expired unseen."""
        now = time.monotonic()
        paused, self._beat = now - self._beat, now
        if paused > self.leadership.session_timeout * 2 / 3:
            self._paused = f"this process was paused for {paused:.1f} s"
        return self._paused or self.leadership.lost or (self.store_.lost if self.store_
                                                        else None)

    def close(self) -> None:
        self.leadership.stop()
