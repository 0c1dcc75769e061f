"""The exception classes of the docker SDK that py-consul's conftest catches."""


class DockerException(Exception):
    """Base class, as in the docker SDK."""


class APIError(DockerException):
    """The "daemon" (here: our launcher) failed to start a container."""


class NotFound(APIError):
    """No container of that name."""
