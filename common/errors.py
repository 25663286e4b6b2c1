"""The pipeline's exceptions, in one place, free of heavy imports (the CLI imports this first)."""

PREEMPTED_EXIT = 3  # exit code of a command stopped by SIGTERM or SIGUSR1 after saving its work (docs/faults.md)


class UserError(Exception):
    """A mistake in what the user gave (paths, options, data): the CLI prints one `error:` line, exit 2."""


class StoreError(UserError):
    """A store is missing, malformed, corrupt, of another version, or used inconsistently."""


class SkipEpisode(Exception):
    """One corpus episode cannot be extracted; the message is the reason recorded in the manifest."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf. Not the user's input at fault: the CLI says so in one line, exit 1."""


class PeerLost(RuntimeError):
    """Another rank of a distributed run is gone (killed, or failed: its own log says why); the last checkpoint
    stands. The CLI says so in one line, exit 1; a rerun with --resume continues."""


class Preempted(Exception):
    """A stop signal (common.stop) arrived and the work so far is saved: the CLI prints one `preempted:` line
    and exits with PREEMPTED_EXIT; a rerun (train: with --resume) continues."""
