"""A nats-server with JetStream's `sync_interval` set (bench/run.py --nats-sync, the crash tests).

`sync_interval` is how often nats-server fsyncs its store (default 2 minutes; `always`: before
every acknowledgement). It has no command-line flag, so this one runs from a config file.
"""

import os
import subprocess
from dataclasses import dataclass

from .embedded import DEFAULT_GOGC, EmbeddedNats, nats_server_binary, wait_for_port


@dataclass
class SyncedNats(EmbeddedNats):
    """nats-server from a config file that sets JetStream's `sync_interval` (None: its default,
    2 minutes; "always": fsync before every acknowledgement)."""

    sync_interval: str | None = None

    def start(self) -> "SyncedNats":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        sync = f", sync_interval: {self.sync_interval}" if self.sync_interval else ""
        # Beside the log (the crash tests keep the store on a disk that loses unsynced writes).
        conf = (self.log_file or self.store_dir).with_suffix(".conf")
        conf.write_text(
            f"listen: 127.0.0.1:{self.port}\nhttp: 127.0.0.1:{self.monitor_port}\n"
            f"server_name: taskyard-{self.port}\n"
            f'jetstream {{ store_dir: "{self.store_dir}"{sync} }}\n'
        )
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={"GOGC": DEFAULT_GOGC, **os.environ},
        )
        wait_for_port(self.port)
        return self
