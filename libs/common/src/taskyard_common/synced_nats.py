"""A nats-server with JetStream's `sync_interval` set (bench/run.py --nats-sync, the crash tests).

`sync_interval` is how often nats-server fsyncs its store (default 2 minutes; `always`: before
every acknowledgement). It has no command-line flag, so this one runs from a config file.
"""

import json
from dataclasses import dataclass

from .embedded import EmbeddedNats, nats_server_binary


@dataclass
class SyncedNats(EmbeddedNats):
    """One nats-server from a config file that sets JetStream's `sync_interval` (None: its
    default, 2 minutes; "always": fsync before every acknowledgement)."""

    sync_interval: str | None = None

    def _command(self) -> list[str]:
        sync = f", sync_interval: {self.sync_interval}" if self.sync_interval else ""
        # Beside the log (the crash tests keep the store on a disk that loses unsynced writes).
        conf = (self.log_file or self.store_dir).with_suffix(".conf")
        conf.write_text(
            f"server_name: {self.server_name}\nlisten: 127.0.0.1:{self.port}\n"
            f"http: 127.0.0.1:{self.monitor_port}\nmax_payload: 1MB\n"
            f"jetstream {{ store_dir: {json.dumps(str(self.store_dir))}{sync} }}\n"
        )
        return [nats_server_binary(), "-c", str(conf)]
