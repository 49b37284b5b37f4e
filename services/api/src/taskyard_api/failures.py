"""Domain errors: what the API's services refuse, and why. errors.py maps them to HTTP in one place;
nothing below the routes knows about status codes."""


class DomainError(Exception):
    """A request the domain refuses; the message is one line, naming the field or the job."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    pass


class Forbidden(DomainError):
    pass


class Refused(DomainError):
    """The job (or checkpoint) is in a state where this may not happen: cancel a finished job,
    retry a running one, decide a checkpoint twice."""


class Invalid(DomainError):
    """A value no rule accepts (the message starts with the field's name)."""


class TooLarge(DomainError):
    pass


class StorageFull(DomainError):
    """The artifact store has no room left (its bucket limit or the server's storage)."""


class Unavailable(DomainError):
    """A dependency (NATS) is away; nothing was written, retry shortly."""
