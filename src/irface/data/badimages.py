"""Counted skipping of undecodable training images, with a limit (config key `max_bad_images`)."""

from __future__ import annotations

import logging
import os

from irface.errors import DataError

log = logging.getLogger(__name__)


class BadImageCounter:
    """Counts skipped images in the current process; past `limit` the next one raises `DataError`.

    Each DataLoader worker process counts its own skips (the count restarts after a fork), so the
    limit holds per process; `limit=0` refuses the first undecodable image.
    """

    def __init__(self, limit: int = 100):
        self.limit = int(limit)
        self._count = 0
        self._pid = os.getpid()

    @property
    def count(self) -> int:
        if self._pid != os.getpid():
            return 0
        return self._count

    def skip(self, error: DataError) -> None:
        """Record one undecodable image (the error names the file and record) or raise past the limit."""
        if self._pid != os.getpid():
            self._pid, self._count = os.getpid(), 0
        self._count += 1
        if self._count > self.limit:
            raise DataError(f"{error} -- more than {self.limit} undecodable images (max_bad_images); "
                            "fix or repack the data, or raise max_bad_images")
        log.warning("skipping undecodable image %d of at most %d: %s", self._count, self.limit, error)
