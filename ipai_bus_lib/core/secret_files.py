"""Where the bus keeps secrets on disk: private files (mode 0600) under the user's directories."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private_file(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600, whatever was there).

    A replaced file is written beside it and renamed over it, so it is never readable by
    others, not even for a moment, and an existing file's wider mode is not kept. With
    ``exclusive`` an existing file is an error (FileExistsError) rather than replaced.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        return
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def new_webhook_secret() -> str:
    """64 hex characters from the operating system's random source."""
    return secrets.token_hex(32)


def config_dir(configured: Path | None = None) -> Path:
    """IPAI_BUS_CONFIG_DIR (as read by settings), else the user's config directory."""
    if configured:
        return configured
    import platformdirs

    return Path(platformdirs.user_config_dir("ipai-bus"))


def ensure_secret_file(path: Path) -> bool:
    """Create a webhook secret at ``path`` unless one is there; True if it was created."""
    try:
        write_private_file(path, new_webhook_secret() + "\n", exclusive=True)
    except FileExistsError:
        return False
    return True


def masked(secret: str) -> str:
    """Enough of a secret to tell two apart, never enough to use: ``a1b2…``."""
    return secret[:4] + "…"
