"""Who may change the server for everyone (AOTI on/off, FP8, regional compilation, anything added later).

- On a Space: its owner signed in with Hugging Face (``SPACE_AUTHOR_NAME``, which Spaces set), or a
  user named in ``AOTI_OWNERS`` (comma-separated; for a Space owned by an organisation, name its
  members here).
- Anywhere: whoever passes the token set in ``AOTI_ADMIN_TOKEN``.
- Locally, with none of these set: the person at the keyboard, that is, everyone.

Visitors keep what changes nobody else's experience: picking a model and generating.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV_OWNERS = "AOTI_OWNERS"
ENV_ADMIN_TOKEN = "AOTI_ADMIN_TOKEN"


@dataclass(frozen=True)
class Access:
    """The owners of this server; `require` refuses anyone else with a message that says how to get in."""

    owners: frozenset[str] = frozenset()
    admin_token: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Access:
        env = os.environ if env is None else env
        owners = {name.strip() for name in env.get(ENV_OWNERS, "").split(",") if name.strip()}
        author = env.get("SPACE_AUTHOR_NAME") or (env.get("SPACE_ID", "").split("/")[0] or None)
        if author:
            owners.add(author)
        return cls(frozenset(owners), env.get(ENV_ADMIN_TOKEN) or None)

    @property
    def open(self) -> bool:
        """No owner and no token configured: a local server, whoever uses it owns it."""
        return not self.owners and not self.admin_token

    def allows(self, username: str | None, token: str | None = None) -> bool:
        if self.open:
            return True
        if self.admin_token and token and hmac.compare_digest(token.encode(), self.admin_token.encode()):
            return True
        return username is not None and username in self.owners

    def refusal(self) -> str:
        """What a visitor is told, and how to get the right."""
        ways = []
        if self.owners:
            ways.append(f"sign in with Hugging Face as {' or '.join(sorted(self.owners))}")
        if self.admin_token:
            ways.append(f"give the admin token (the server's {ENV_ADMIN_TOKEN})")
        return ("Only the owner can change this server for everyone (AOTI on/off, FP8, regional compile): "
                f"{', or '.join(ways)}. Generating is open to all.")

    def require(self, username: str | None, token: str | None = None) -> None:
        """A PermissionError with `refusal` unless ``username`` or ``token`` is an owner's."""
        if not self.allows(username, token):
            raise PermissionError(self.refusal())


class RateLimit:
    """At most ``count`` events in any ``window_s`` seconds (compiles started, for one server)."""

    def __init__(self, count: int, window_s: float, what: str = "compiles") -> None:
        self.count, self.window_s, self.what = count, window_s, what
        self._times: deque[float] = deque()
        self._lock = threading.Lock()

    def take(self) -> None:
        """Count one event now; a ValueError that says when to try again past the limit."""
        with self._lock:
            self._check(time.monotonic())
            self._times.append(time.monotonic())

    def check(self) -> None:
        """`take`'s ValueError if one more event now would pass the limit; counts nothing."""
        with self._lock:
            self._check(time.monotonic())

    def _check(self, now: float) -> None:
        while self._times and now - self._times[0] >= self.window_s:
            self._times.popleft()
        if len(self._times) >= self.count:
            wait = self.window_s - (now - self._times[0])
            raise ValueError(f"too many {self.what}: at most {self.count} every {self.window_s:.0f} s; "
                             f"try again in {wait:.0f} s.")


class ServedModels:
    """Which model serves each task, and which a request may name. With ``open_catalog`` (a local
    server: whoever uses it owns it) a request may name any catalog model and switch to it, at most
    `switch_rate` times; otherwise requests name only the served ones, and loading another is an owner
    action. Every switch is logged and told to ``on_switch(task, previous, new, by)`` (the metrics)."""

    def __init__(self, open_catalog: bool, on_switch: Callable[[str, str | None, str, str], None]) -> None:
        self.open_catalog = open_catalog
        self.on_switch = on_switch
        self.by_task: dict[str, str] = {}
        self.switch_rate = RateLimit(int(os.environ.get("AOTI_SWITCH_RATE", "10")), 600.0, "model switches")

    def get(self, task: str) -> str | None:
        return self.by_task.get(task)

    def ids(self) -> list[str]:
        return list(self.by_task.values())

    def check(self, model_id: str, task: str) -> None:
        """A ValueError unless a request may use ``model_id``: a served model, or on an open catalog any
        model while switches stay under `switch_rate` (checked, not counted: `admit` counts)."""
        if self.by_task.get(task) == model_id:
            return
        if not self.open_catalog:
            served = ", ".join(sorted(self.by_task.values())) or "none yet"
            raise ValueError(f"{model_id} is not served here (served: {served}); loading another model is for "
                             "the owner (the Optimization tab).")
        self.switch_rate.check()

    def admit(self, model_id: str, task: str) -> None:
        """A checked request is about to run on ``model_id``: a switch, if it is one, is counted against
        `switch_rate` and told."""
        if self.by_task.get(task) != model_id:
            self.switch_rate.take()
            self.serve(model_id, task, "a request")

    def start(self, model_id: str, task: str) -> None:
        """``model_id`` serves ``task`` from startup (not a switch)."""
        self.by_task[task] = model_id

    def serve(self, model_id: str, task: str, by: str) -> None:
        """``model_id`` now serves ``task``, loaded by ``by`` (the owner, a request): a switch, if it is one."""
        previous, self.by_task[task] = self.by_task.get(task), model_id
        if previous != model_id:
            log.warning("switch: %s model %s -> %s, by %s", task, previous, model_id, by)
            self.on_switch(task, previous, model_id, by)
