"""The deploy tooling's exceptions (SSH and signature errors live in ``ssh`` and ``minisign``).

::

    EdgeAgentError
    └── DeployError                  anything the deploy tooling refuses or fails at
        ├── BundleError          a bundle cannot be built: bad config, missing module, no wheels
        ├── BundleInvalid            a bundle is refused: unsigned, tampered, unknown key, half
        │                            copied, another platform or profile (names the file and why)
        ├── KeyFileError             a signing or trusted key is missing or unreadable
        ├── HostUnsuitable           the device cannot run the release (OS, arch, Python, space)
        ├── ProfileMismatch          the profile given does not match the device's hardware
        ├── RemoteError              the device-side tool failed (its message is kept)
        ├── TransferError            a content file could not be fetched or did not verify
        └── HealthCheckFailed        the new release did not become healthy (rolled back)
"""

from __future__ import annotations

from ..errors import EdgeAgentError


class DeployError(EdgeAgentError):
    """Base of the deploy tooling's errors."""


class BundleError(DeployError):
    """A bundle cannot be built; the message says what is wrong and where."""


class BundleInvalid(DeployError):
    """A bundle is refused before anything is installed."""


class KeyFileError(DeployError):
    """A signing or trusted key is missing or unreadable."""


class HostUnsuitable(DeployError):
    """The device cannot run this release; the message lists every problem found."""


class ProfileMismatch(DeployError):
    """The profile given does not match the device."""


class RemoteError(DeployError):
    """The device-side tool reported an error."""


class TransferError(DeployError):
    """A content file could not be fetched (no reply, server error) or did not verify; the message
    names the file (its SHA-256) and, where it matters, the offset."""


class HealthCheckFailed(DeployError):
    """The new release did not become healthy within the deadline."""

    def __init__(self, message: str, *, rolled_back_to: str | None = None, logs: str = "") -> None:
        super().__init__(message)
        self.rolled_back_to = rolled_back_to
        self.logs = logs
