"""Keep credentials out of every log line and error text the daemon produces.

Sources are written never to put a password or token in a message; this is the net under
them: every configured secret (vCenter passwords, agent token) is replaced by ``***`` in
log records and in the error strings the daemon keeps.
"""

from __future__ import annotations

import logging
import threading
import traceback

from accelmon.config import Config


class Redactor(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 3:  # shorter strings would mangle ordinary text
            with self._lock:
                self._secrets.add(secret)

    def apply(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            try:
                msg = record.getMessage()
            except Exception:  # a broken format string is not ours to fix here
                return True
            red = self.apply(msg)
            if record.exc_info and record.exc_info[1] is not None:
                red += "\n" + self.apply("".join(traceback.format_exception(*record.exc_info))).rstrip()
                record.exc_info = None
                record.exc_text = None
            record.msg, record.args = red, None
        return True


REDACTOR = Redactor()


def secrets_of(cfg: Config) -> list[str]:
    out: list[str] = []
    for vc in cfg.vcenter:
        try:
            out.append(vc.secret())
        except (OSError, KeyError):
            pass
    for tok, path in ((cfg.agents.token, cfg.agents.token_file), (cfg.agent.token, cfg.agent.token_file)):
        if tok is not None:
            out.append(tok.get_secret_value())
        if path is not None:
            try:
                out.append(path.read_text().strip())
            except OSError:
                pass
    return [s for s in out if s]


def install(cfg: Config) -> Redactor:
    """Register the config's secrets and attach the filter to every root handler."""
    for s in secrets_of(cfg):
        REDACTOR.add(s)
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for h in root.handlers:
        if REDACTOR not in h.filters:
            h.addFilter(REDACTOR)
    return REDACTOR
